"""Point-in-time recovery: base backup + archived WAL into a new cluster, and what goes around it.

The runbooks this replaces (seeds 000 and 003, "Point-in-Time Recovery"): find the base
backup before the target time, restore it, write ``restore_command`` and
``recovery_target_time``, start PostgreSQL and "wait for recovery to complete (check logs)".
Here each step is a plain function that refuses before it acts, one module per step:

1. :mod:`.base_backup`: take, list and choose the base backup (refusing unsafe points).
2. :mod:`.wal`: prove the WAL archive continuous from the backup to the point (a gap is
   named before anything is downloaded), stage it when the archive is not local.
3. :mod:`.base_restore`: the backup into a new data directory, every byte checked.
4. :mod:`.recovery`: recovery settings, start, poll until promoted (:mod:`.cluster` starts,
   stops and removes the clusters made here).

:mod:`.one_pass` runs 2 and 3 at once (the stream is hashed while extracted; the WAL is
proved and staged meanwhile; a refusal of either leaves no data directory).

Around it: :mod:`.checksums` (``pg_checksums`` on a stopped copy), :mod:`.relations`
(digests of ordered rows, relation files), :mod:`.relation_restore` (evidence, and the switch
back of selected tables in ONE transaction), :mod:`.damage_finder` (the first large
UPDATE/DELETE in ``pg_waldump`` output), :mod:`.drill` (drills only); :mod:`.lsn` and
:mod:`.target` hold the arithmetic and the recovery point.

Server tools run as the server's OS user through :mod:`dr.localexec`; SQL goes through
:mod:`tasks.postgres.client`; the repository is a :class:`tasks.storage.client.Repository`
passed in by the flows.
"""
