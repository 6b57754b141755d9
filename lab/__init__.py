"""The lab: a real DR environment on one machine, behind ``dr lab up | status | down``.

What :func:`up` brings up in its folder (default ``./.lab`` or ``$DR_LAB_DIR``)::

    <dir>/state.json        ports, PIDs, paths (:class:`LabState`)
    <dir>/dr.yaml           targets ``lab`` (file:// repository) and ``lab-s3`` (s3://),
                            plus one per runbook of shared/seeds (:mod:`lab.seeds`)
    <dir>/pg/primary        PostgreSQL primary  (region primary-region), WAL -> <dir>/wal
    <dir>/pg/replica1       streaming hot standby (region dr-region) with a slot
    <dir>/pg/control        small cluster: databases ``prefect`` and ``dr_history``
    <dir>/wal, <dir>/repo   WAL archive and file backup repository
    <dir>/seed-backups/     seed 001's cron-made dumps, played by ``up`` (db_backup_*.sql.gz)
    <dir>/secrets/          generated credentials, mode 600 (never printed)
    <dir>/podman/           the lab's own Podman service (Docker API) running dr-lab-app
    <dir>/prefect-home/     the lab's Prefect server (database on the control cluster)
    <dir>/logs/             logs of the processes the lab started

plus moto (S3 on loopback, buckets ``dr-lab`` and ``dr-lab-evidence`` with Object Lock) and
the Slack stand-in, each a background process on a free loopback port (never 5432).

Every component is an idempotent ``ensure_*`` step: it reads what is there, repairs or
starts only what is missing or down, and says what it did (``created``, ``started``,
``unchanged``, ``rebuilt``...). So ``up`` twice is harmless and ``up`` after a crash or a
half-finished run repairs. The lab never touches what it did not start: processes are
stopped by the PIDs in ``state.json`` only after their start time and command line still
match, containers only on the lab's own Podman service, servers only in its own folder.

Helpers it orchestrates: :mod:`lab.pgcluster` (PostgreSQL clusters), :mod:`lab.podman`
(the Podman service), :mod:`lab.s3server` (moto), :mod:`lab.prefect_server`,
:mod:`lab.slack_standin`, :mod:`lab.procs` (background processes and their PIDs),
:mod:`lab.heartbeat_app` (the application), ``lab/dataset.sql`` and :mod:`lab.seeds` (the
seed runbooks' targets and databases).

Modules: :mod:`lab.state` (``state.json``, folder, secrets, environments), :mod:`lab.db`
(the lab's own connections), :mod:`lab.nodes` (clusters, dataset, seeds), :mod:`lab.services`
(moto, Slack stand-in, Prefect), :mod:`lab.app` (the application), :mod:`lab.drconfig` (the
generated ``dr.yaml``), :mod:`lab.up` (``up``, ``heal``), :mod:`lab.status`, :mod:`lab.down`.

Public API (stable; other modules and tests rely on it):

- :func:`lab.up.up` ``(base_dir, *, prefect=True, engine="auto", console=None) -> LabState``
- :func:`lab.status.status` ``(base_dir) -> dict`` (JSON-able)
- :func:`lab.down.down` ``(base_dir) -> None``
- :func:`lab.up.heal` ``(base_dir) -> LabState``: back to "primary + streaming replica + app
  writing" after a drill (switches roles back after a failover)
- in :mod:`lab.state`: ``clusters(state) -> dict[str, Cluster]``, ``app_env(state) -> dict``,
  ``lab_env(state) -> dict``, ``load_state(base_dir) -> LabState | None``,
  ``default_base_dir() -> Path``, constants ``SECRET_BLOCKS`` (Prefect Secret block name ->
  file in ``<dir>/secrets``) and ``SECRET_ENV`` (block name -> the environment variable
  ``dr.yaml`` names without Prefect)
"""
