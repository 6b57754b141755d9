"""Compatibility facade (removed when the layout lands): tasks.health.checks, tasks.postgres.heartbeat.

The RPO arithmetic moved to :mod:`flows.lifecycle.measure`.
"""

from tasks.health.checks import (  # noqa: F401
    CheckOutcome,
    HealthResult,
    run_health_checks,
    wait_until_healthy,
    wait_until_healthy_task,
)
from tasks.postgres.heartbeat import Ack, HeartbeatProbe  # noqa: F401
