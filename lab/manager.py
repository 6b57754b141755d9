"""Compatibility facade (removed when the layout lands): the lab is in lab/state, up, status, down.

See the :mod:`lab` package docstring for what lives where.
"""

from lab.down import down  # noqa: F401
from lab.procs import ProcessInfo  # noqa: F401
from lab.state import (  # noqa: F401
    APP_CONTAINER,
    BUCKET,
    EVIDENCE_BUCKET,
    SECRET_BLOCKS,
    SECRET_ENV,
    ClusterInfo,
    LabState,
    app_env,
    clusters,
    default_base_dir,
    lab_env,
    load_state,
)
from lab.state import save_state as _save_state  # noqa: F401
from lab.status import status  # noqa: F401
from lab.up import heal, up  # noqa: F401
