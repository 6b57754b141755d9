"""Compatibility facade (removed when the layout lands): the old ``tasks.standby`` names.

Now in ``tasks.postgres.standby`` (checkpoint, slots, standby settings),
``tasks.postgres.rejoin`` (pg_rewind, base backup, pg_controldata) and
``tasks.postgres.datadir`` (a data directory's own files).
"""

from __future__ import annotations

from tasks.postgres.datadir import (  # noqa: F401
    AUTO_CONF,
    CONFIG_DIRS,
    CONFIG_SUFFIX,
    RECOVERY_SIGNAL,
    STANDBY_SIGNAL,
    read_auto_conf,
)
from tasks.postgres.models import SYSTEM  # noqa: F401
from tasks.postgres.rejoin import (  # noqa: F401
    BASE_BACKUP_TIMEOUT_SECONDS,
    REWIND_TIMEOUT_SECONDS,
    last_checkpoint,
    rebuild_from_base_backup,
    rebuild_from_base_backup_task,
    rewind,
    rewind_task,
)
from tasks.postgres.standby import (  # noqa: F401
    FENCE_SETTINGS,
    checkpoint,
    checkpoint_task,
    configure_standby,
    configure_standby_task,
    drop_inactive_slot,
    drop_inactive_slot_task,
    ensure_physical_slot,
    ensure_physical_slot_task,
    slot_name_for,
)
