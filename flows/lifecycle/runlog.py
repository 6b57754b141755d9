"""The logger a lifecycle step writes to: the run's (shown in the UI) inside a run."""

from __future__ import annotations

import logging

log = logging.getLogger("flows.lifecycle")


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a flow run (shown in the UI), else the lifecycle's logger."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
        return get_run_logger()
    return log
