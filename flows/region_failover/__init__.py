"""Region failover: the runbook for "data center / region failure" and "primary database failure".

The runbooks it replaces (seed 002 "Fusion Bitcoin Bridge", *Full Region Failover*: update
DNS to the DR region, scale up the DR infrastructure, point the applications at the DR
resources; seeds 000 and 003, *Database Failure*: "if a replica is available, promote it to
primary", ``kubectl set env deployment/... DB_HOST=new-primary``). As a flow:

1. **assess**, in parallel: every PostgreSQL node (role, timeline, replayed WAL position,
   lag, newest heartbeat it holds), what the primary reports of its standbys, the
   application's containers and deployments, its health checks, the DR region's readiness;
   then **declare the severity** (SEV1: the primary takes no writes);
2. **choose** the replica that loses the least: the highest WAL position (received or
   replayed: WAL received is replayed at promotion), ties broken by region (outside the
   failed region first, then ``preferred_regions``), then config order. No healthy replica
   stops the run here, with nothing changed. A replica further behind than the RPO
   objective needs a person's approval, and the question says how far;
3. **fence** the old primary before anything else changes: stop it where it runs on this
   machine, else make it read-only, close its databases and end its sessions; then *prove*
   it takes no writes (a refused connection, a standby, a rejected write). Unproven, a
   person must approve: policy never auto-approves it, drills refuse it, and only the
   explicit ``allow_unproven_fence`` option lets a run go on without proof;
4. **promote** the chosen replica (idempotent; waits until it leaves recovery), right after
   checking once more that the old primary is still fenced (re-fencing it if it came back);
5. **repoint and scale**, in parallel: the DNS record (Route 53 UPSERT), Docker writers
   recreated with the new ``DB_HOST``/``DB_PORT``, Kubernetes writers' secret + rollout
   restart, DR-region deployments scaled up to their configured replicas;
6. **verify** end to end: the application's own writes land on the new primary, the
   health checks and validation queries pass, and exactly one node takes writes;
7. **measure**: RTO from the failure to the first application write on the new primary,
   with a breakdown (assessed, fenced, promoted, repointed, first write); RPO from the
   heartbeat: rows the old primary acknowledged that the new one lacks. With synchronous
   replication configured, that must be zero.

Drills (``mode=drill``) inject the failure themselves, on the lab or any target that allows
drills: they check first that a healthy replica exists (so nothing is broken for nothing),
start the heartbeat probe, crash the primary at a stamped moment (``inject=kill``: every
process frozen then SIGKILLed; ``inject=immediate``: ``pg_ctl stop -m immediate``), run the
same recovery as an incident, and end with the failback flow (``failback``, on by default in
drills) so the next drill starts from the configured roles.

Every change is recorded with its undo. Until a replica is promoted, the compensation stack
can restart the old primary; after, nothing automatic may do so (the guarded undo refuses):
the old primary comes back only as a standby, through failback.

The runbook reads top to bottom in :mod:`flows.region_failover.flow`. The other names below
"""

from __future__ import annotations

from flows.region_failover.flow import region_failover_flow

__all__ = ["region_failover_flow"]
