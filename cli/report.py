"""``dr report``: past drills and incidents from the history, and the HTML trend report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import EXIT_BAD_INPUT, EXIT_FAILED, err, load, out, print_config_error
from dr.config import Scenario
from dr.errors import ConfigError, DRError

__all__ = ["report_cmd"]

DEFAULT_HTML_REPORT = Path("dr-report.html")


def report_cmd(
    target: str | None = typer.Option(None, "--target", "-t", help="Only this target."),
    scenario: Scenario | None = typer.Option(None, "--scenario", help="Only this scenario."),
    since: str | None = typer.Option(None, "--since", help="Only runs since DATE."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    html: Path = typer.Option(
        DEFAULT_HTML_REPORT, "--html", help="Where to write the HTML report."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="Config file."),
) -> None:
    """Print past drills and incidents; write an HTML report with the RTO/RPO trend."""
    try:
        _, cfg = load(config)
        moment = _parse_since(since)
        if target is not None:
            cfg.target(target)  # an unknown target is a typo, not an empty history
    except ConfigError as exc:
        print_config_error(exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    from tasks.history import store as history_store
    from tasks.report import html_report

    try:
        rows = history_store.query_runs(
            cfg.history,
            target=target,
            scenario=scenario.value if scenario else None,
            since=moment,
        )
    except ConfigError as exc:
        print_config_error(exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except DRError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_FAILED) from None
    written = html_report.write_html_report(rows, html)
    if json_out:
        payload = {
            "count": len(rows),
            "refused": sum(1 for r in rows if r.get("outcome") == "refused"),
            "html": str(written),
            "runs": [_jsonable(r) for r in rows],
        }
        typer.echo(json.dumps(payload, default=str))
        return
    _print_history(rows, written)


def _print_history(rows: list[dict[str, Any]], written: Path) -> None:
    """One table row per run, RTO and RPO against their objectives; refused runs apart."""
    refused = [r for r in rows if r.get("outcome") == "refused"]
    rows = [r for r in rows if r.get("outcome") != "refused"]
    table = Table(title=f"DR history ({len(rows)} run(s))")
    for column in ("declared (UTC)", "scenario", "target", "mode", "outcome", "RTO", "RPO"):
        table.add_column(column)
    for row in rows:
        cells = []
        for measure in ("rto", "rpo"):
            value = row.get(f"{measure}_seconds")
            objective = row.get(f"{measure}_objective_seconds")
            if value is None:
                cells.append("n/a")
                continue
            ok = objective is None or value <= objective
            mark = "[green]met[/]" if ok else "[red]MISSED[/]"
            obj = "" if objective is None else f" / {objective:g} s"
            cells.append(f"{value:.2f} s{obj} {mark}")
        table.add_row(
            row["declared_at"].strftime("%Y-%m-%d %H:%M:%S"),
            escape(row["scenario"]),
            escape(row["target"]),
            row["mode"],
            row["outcome"],
            *cells,
        )
    out.print(table)
    if refused:
        out.print(_refused_table(refused))
    out.print(f"HTML report: {escape(str(written))}")


def _refused_table(rows: list[dict[str, Any]]) -> Table:
    """Runs refused before changing anything (no base backup before the point, a WAL gap)."""
    table = Table(title=f"Refused, nothing changed ({len(rows)} run(s))")
    for column in ("declared (UTC)", "scenario", "target", "mode", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["declared_at"].strftime("%Y-%m-%d %H:%M:%S"),
            escape(row["scenario"]),
            escape(row["target"]),
            row["mode"],
            escape(str(row.get("reason") or (row.get("summary") or {}).get("reason", ""))),
        )
    return table


def _parse_since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {value!r}: expected a date (2025-01-31) or an ISO time",
            [("--since", value)],
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in row.items():
        if key == "summary":
            continue
        clean[key] = value.isoformat() if isinstance(value, datetime) else value
    for measure in ("rto", "rpo"):
        value, objective = row.get(f"{measure}_seconds"), row.get(f"{measure}_objective_seconds")
        clean[f"{measure}_met"] = (
            None if value is None or objective is None else bool(value <= objective)
        )
    return clean
