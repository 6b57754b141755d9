"""Security-breach response: contain, preserve evidence, rotate and prove, resume with approval.

The runbooks it replaces (seed 002 "Fusion Bitcoin Bridge", *Suspected Breach Response*:
"immediate isolation, evidence preservation (forensic snapshots), credential rotation"; seed
003 *Security Breach*: "stop all trading, isolate affected systems, rotate all API keys and
passwords, preserve logs for forensics, resume only after clearance"). As phases of one run:

1. **validate** (before the run starts, so a bad request changes nothing): every service
   named exists in the target, every database role named exists, the networks to block are
   networks, an evidence repository is configured. An unknown role or service is a
   :class:`~dr.errors.ConfigError` naming the known ones.
2. drills only, **plant the intruder** at a stamped moment (``failure_at``): a rogue login
   role ``dr_intruder_<id>`` with a session held open, and the application's database
   password treated as leaked (the intruder holds a session with it too).
3. **regulatory clock**: the detection time and every deadline the target names
   (``regulatory_deadlines``, default the GDPR 72-hour notification) as absolute UTC times,
   in the report and as a reply in the Slack thread (again at the end, with time left).
4. **capture volatile evidence** first (RFC 3227's order of volatility): the sessions open
   on every node, roles and privileges, container states, security-group rules. It takes
   milliseconds and is gone once containment ends the sessions.
5. **contain and preserve**, in parallel: *isolation* (containers stopped, deployments
   scaled to zero, an isolating NetworkPolicy, security groups' inbound rules revoked,
   compromised roles set ``NOLOGIN`` with their sessions ended on every node, attacker
   networks rejected at the top of ``pg_hba.conf`` on local nodes and at security groups)
   and *evidence* (server logs, container logs, Kubernetes events, EBS snapshots, a
   ``pg_dump`` of given tables), each file with its SHA-256, bundled with a manifest and
   written once to the evidence repository (S3 Object Lock where the bucket has it), then
   read back and verified. Evidence storage failing does not stop containment: the report
   says the evidence is incomplete and where the staged copy is.
6. **rotate credentials**, only once evidence is preserved, in parallel: database role
   passwords (new values generated here, sent as verifiers only, old sessions ended, the
   value written to every store: those named, and every Prefect Secret block found holding
   the leaked value), Kubernetes secret keys, IAM access keys (new key, old one
   deactivated), Slack and other API tokens by reference (a person puts the token the
   provider issued in a Prefect block or an environment variable).
7. **prove**: every old credential is rejected and every new one works (a login, a signed
   AWS call, Slack's ``auth.test``), compromised roles cannot log in, their sessions are
   gone (the drill's intruder sessions ended and cannot reconnect), every store holds the
   new value.
8. optionally, **restore clean** (``restore_tables`` as they were at ``restore_to``, a
   moment before the intrusion), behind its own approval gate: point-in-time recovery of
   the target's base backup and WAL archive into a side cluster (``tasks.recovery``, as the
   data-corruption scenario does), then the tables copied back into the live database in
   one transaction, digests compared; the side cluster is removed. In drills the intruder
   also deletes rows of those tables, and the restored rows must match a snapshot taken
   just before the intrusion.
   **restore files** (``restore_files``, default when the target has S3 ``files:`` and the
   moment is known): each prefix back to ``restore_to`` from its object versions, behind
   its own approval gate (:mod:`flows.breach_response.files`). Every object changed since
   is evidence first (its bytes in the bundle, copied beside the prefix); objects created
   since go out of the live prefix unless a row still names them; the prefix is then
   compared with its state at ``restore_to`` again. In drills the intruder overwrites one
   object, deletes one and plants one; the red twin ``object-survives`` skips one restore.
9. **approval gate**: services come back only after someone approves (who and why are
   recorded; drills are approved by policy), then the recorded service state is restored
   with the new credentials (containers recreated with the new password) and verified end
   to end: the application writes again, health checks and validation queries pass.
10. **measure**: detected -> contained and detected -> services resumed (the RTO); RPO is
    zero, or the window from ``restore_to`` to containment when tables were restored (an
    upper bound, ``rpo_bound: "upper"``, when files were: some writes in it were bad).
11. drills only, **clean up**: the rogue role is dropped (after the evidence is stored),
    the network blocks the drill made are lifted (its "attacker" is make-believe), what is
    left of the drill's object damage is put back.

The evidence bundle is checked by anyone, any time, with the command the report prints:
``dr evidence verify <bundle url> --manifest-sha256 <sha256>`` (``dr/cli_evidence.py``).

New secrets never appear in logs, artifacts, messages or the evidence: they are generated
with :func:`secrets.token_urlsafe`, registered for redaction at once, kept in memory as
``SecretStr`` and written only to their stores and the application's environment. A failed
run is compensated only in drills (the lab comes back); in an incident, isolation stays in
place (fail closed) and the report lists how to undo it by hand. A credential that cannot
be rotated is reported as a failed critical check: the run finishes everything else, then
ends failed.
"""

from __future__ import annotations

from flows.breach_response.flow import breach_response_flow

__all__ = ["breach_response_flow"]
