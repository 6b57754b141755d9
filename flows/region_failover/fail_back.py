"""The drill's last phase: rejoin the old primary and switch the roles back."""

from __future__ import annotations

import contextlib

from dr.errors import DRError
from flows.common.failback.models import FailbackOptions
from flows.common.failback.runbook import run_failback
from flows.region_failover.run import Failover
from tasks.kubernetes import deployments as kubernetes_deployments

__all__ = ["fail_back"]


def fail_back(run: Failover) -> None:
    """Stop the probe (a writer), then rejoin the old primary and switch back."""
    ctx = run.ctx
    probe = ctx.heartbeat
    if probe is not None:
        probe.stop()  # the probe is a writer too: none may write during a switch-back
    opts = FailbackOptions(
        switch_back=run.opts.switch_back,
        rejoin_method=run.opts.rejoin_method,
        app_heartbeat_writer=run.opts.app_heartbeat_writer,
    )
    report = run_failback(
        ctx, ctx.config, ctx.target_name, opts, systems=run.systems, password=run.password
    )
    if report.switched_back:
        for change in run.scaled:
            with contextlib.suppress(DRError):
                ctx.record_change(
                    kubernetes_deployments.restore_scale_task(run.systems.k8s, change)
                )
    run.failed_back = report.switched_back
    ctx.details["failback"] = report.model_dump(mode="json", exclude={"changes"})
