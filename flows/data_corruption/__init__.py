"""Data corruption and accidental deletion: detect, stop the writers, recover to just before, resume.

The runbooks it replaces (seed 000 "Point-in-Time Recovery", seed 003 "Accidental Data
Deletion" and "Database Failure: data corruption detected"): stop the processes that might
overwrite data, identify what was damaged and when, keep the damaged state, find the base
backup before the damage, restore it and apply WAL up to just before, verify, switch the
application to it, restart, verify. As phases of one run:

1. **assess**, in parallel: data-checksum failure counters; ``pg_checksums`` on a stopped
   copy (when asked, and always for the damaged-page drill); ``pg_amcheck`` where the
   extension is installed; the target's validation queries; row counts against the newest
   logical backup's manifest; and :func:`tasks.recovery.find_damage` on the archived WAL,
   which names the first transaction that changed many rows of one table and when it
   committed. Together they name the damaged relations and, where the evidence allows,
   when the damage began.
2. **plan recovery** (nothing changes yet, so a refusal leaves everything as it was): the
   recovery point (the parameter, else just before the damaging commit found in the WAL,
   else, in a drill, the stamp), the newest base backup before it, and a proof that the
   archive holds every WAL segment in between (a gap is reported with its segment name).
3. **stop the writers**: Docker containers stopped / Kubernetes deployments scaled to 0,
   recording what ran.
4. **preserve evidence**: ``pg_dump`` of the damaged relations (or, for a whole-database
   switch, the database kept as ``<db>_damaged_<ts>`` by a file copy), with SHA-256, in
   ``target.evidence_repository`` (default ``<backup repository>/evidence/``). The damaged
   database is never dropped by this flow.
5. **recover** by point-in-time recovery into a new cluster (base backup + archived WAL).
6. **verify the recovered data**: the same checks, and in drills the rows of every damaged
   table compared with the snapshot taken at the stamp.
7. approval gate (incident mode), then **switch**: the damaged relations restored from the
   recovered cluster into the live database in ONE transaction (``relations`` given or
   found, and ``whole_database`` false), else the whole database: the writers are
   repointed at the recovered cluster (``DB_HOST``/``DB_PORT``).
8. **restart the writers** with their recorded state, **verify end to end**.
9. **measure**: RTO = writers stopped → writers healthy again (first heartbeat row written
   by the application after the restart); RPO = the data-loss window between the recovery
   point and the damage (relation restore) or between the recovery point and the moment
   the writers stopped (whole database), with the heartbeat rows lost.

Drill mode injects the damage itself (after a base backup newer than
``base_backup_max_age_minutes`` is ensured, a time is stamped and the rows of the tables to
be damaged are snapshot as digests): ``bad-update`` sets ``shop.orders.total = 0`` on every
row, ``mass-delete`` deletes every row of ``shop.order_items``, ``damaged-page`` inverts
bytes in a heap page of ``shop.orders`` in a stopped COPY of the cluster (never in the live
cluster's files) so ``pg_checksums`` catches it. A database without the lab's shop tables
(the seed targets') gets its table from ``drill_table``, else chosen by
:func:`choose_drill_table`: the largest table no foreign key points at (mass-delete), or
the largest with a numeric column outside every key and constraint (bad-update sets that
column to 0; damaged-page damages that table). A drill keeps a dump of the tables it
damages; if the drill fails before the switch, compensation puts those rows back.

The runbook reads top to bottom in :mod:`flows.data_corruption.flow`. The other names below
"""

from __future__ import annotations

from flows.data_corruption.flow import data_corruption_flow

__all__ = ["data_corruption_flow"]
