"""Failback: make the old primary a standby again, then switch back with no data loss.

After a failover the old primary is down (fenced) and holds WAL the new primary never saw.
This flow is the runbook's "return to normal" (seed 002: "update applications to use ...
resources" in reverse; seed 003's quarterly drill: "procedures followed, recovery verified"):

1. **rejoin** every configured node that is not a streaming standby of the current primary:
   stop it if it runs, ``CHECKPOINT`` on the primary, ``pg_rewind --restore-target-wal`` (exit
   code checked), falling back to a fresh base backup when the rewind fails or the rewound
   node does not stream; its own configuration kept; ``standby.signal`` and
   ``primary_conninfo`` (with the node's name as ``application_name``, so
   ``synchronous_standby_names`` still matches) written; started; streaming confirmed on the
   primary's ``pg_stat_replication``;
2. **switch back** (optional; what drills do so the next drill starts from the configured
   roles): stop the application's writers, wait until the configured primary has replayed
   everything, stop the current primary cleanly (its shutdown checkpoint is then the last
   record it wrote), *prove* the configured primary replayed past that checkpoint (so not
   one acknowledged write is lost), promote it, rejoin the other node as its standby,
   repoint the application (container environment, Kubernetes secret, DNS) and start it;
3. **verify**: the application's writes land on the configured primary, and every replica
   streams from it.

Every change is recorded with its undo (through the incident lifecycle when run inside a
drill, or in this flow's own report when run alone). Run alone, the flow takes the target's
lock like every DR run, so it never races a failover.

The flow is in :mod:`flows.failback.flow`; the runbook it runs is
:mod:`flows.common.failback.runbook` (the region-failover drill runs it too).
"""

from __future__ import annotations

from flows.failback.flow import failback_flow

__all__ = ["failback_flow"]
