"""``dr drill region-failover --via-alert``: the lab's monitoring chain recovers, the drill watches.

Exit codes as for every drill: 0 passed, 1 failed, 2 bad input (not region-failover, not
the lab's target, no lab with monitoring: nothing was changed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, err, out
from dr.config import Scenario
from dr.errors import PreconditionError

__all__ = ["drill_via_alert_command"]

STAGE_LABELS = {
    "detection": "detection (kill -> alert startsAt)",
    "alert": "alert (startsAt -> run created)",
    "dispatch": "dispatch (created -> flow code running)",
    "recovery": "recovery (-> promoted)",
    "first_write": "first write (-> app writes on the new primary)",
    "total": "kill -> first application write",
}


def _lab_dir(config: Path | None) -> Path:
    """The lab whose ``dr.yaml`` is ``config`` (it sits in the lab folder), else the default."""
    from lab.state import default_base_dir

    if config is not None and (config.absolute().parent / "state.json").exists():
        return config.absolute().parent
    return default_base_dir()


def drill_via_alert_command(
    scenario: Scenario, target: str, *, config: Path | None, json_out: bool, failback: bool
) -> None:
    """Run the via-alert drill on the lab and exit with the drill's code."""
    from lab.monitoring import LAB_TARGET

    if scenario != Scenario.region_failover or target != LAB_TARGET:
        err.print(
            "[bold red]error:[/] --via-alert runs region-failover on the lab's target "
            f"{LAB_TARGET!r} (its monitoring routes only that)"
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    from lab.monitoring_drill import drill_via_alert

    try:
        result = drill_via_alert(_lab_dir(config), failback=failback)
    except PreconditionError as exc:
        err.print(f"[bold red]drill via alert not run or not finished:[/] {exc}")
        if json_out:
            typer.echo(json.dumps({"outcome": "failed", "reason": str(exc)}))
        code = EXIT_BAD_INPUT if "nothing changed" in str(exc) else EXIT_FAILED
        raise typer.Exit(code) from None
    if json_out:
        typer.echo(json.dumps(result))
    else:
        _print(result)
    raise typer.Exit(EXIT_OK if result["outcome"] == "passed" else EXIT_FAILED)


def _print(result: dict[str, Any]) -> None:
    table = Table(title="drill region-failover on lab, through the alert chain")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for key, label in STAGE_LABELS.items():
        value = result["stages"].get(key)
        table.add_row(label, "-" if value is None else f"{value:.2f}")
    out.print(table)
    out.print(
        f"Outcome: {result['outcome'].upper()}"
        + (f" — {result['reason']}" if result["reason"] else "")
    )
    out.print(
        f"RTO {result['rto_seconds']} s ({result['rto_basis']}); lost rows "
        f"{result['lost_rows']} of {result['acknowledged_before_kill']}; "
        f"primaries at once: at most {result['max_primaries']} in {result['samples']} samples"
    )
    out.print(
        f"incident run {result['flow_run_id']} ({result['run_outcome']}); {result['put_back']}"
    )
