"""``dr doctor``: what this machine lacks for the lab and the flows, with the fix for each.

Exit codes: 0 every required check passed (warnings allowed), 1 a required check failed.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lab import doctor

__all__ = ["register", "render"]

EXIT_OK, EXIT_FAILED = 0, 1
STYLES = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def render(report: doctor.DoctorReport, console: Console) -> None:
    """The report as a table (check, status, detail, fix) and a one-line verdict."""
    verdict = "[green]ok[/]" if report.ok else "[red]NOT ok[/]"
    table = Table(title=f"dr doctor — {verdict} ({report.seconds:.1f} s)")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        status = check.status if check.required else f"{check.status} (optional)"
        table.add_row(
            escape(check.name),
            f"[{STYLES[check.status]}]{status}[/]",
            escape(check.detail),
            escape(check.fix),
        )
    console.print(table)
    combined = doctor.fix_all(report)
    if combined:
        console.print(f"fix all missing programs: {escape(combined)} (or bash scripts/setup.sh)")


def register(app: typer.Typer) -> None:
    """Add ``dr doctor`` to the command line."""

    @app.command("doctor")
    def doctor_command(
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        config: Path | None = typer.Option(
            None, "--config", "-c", help="Config file (default: $DR_CONFIG, ./dr.yaml, lab's)."
        ),
    ) -> None:
        """Check programs, the container engine, ports, disk, the Prefect API and the config."""
        report = doctor.diagnose(config)
        if as_json:
            typer.echo(report.model_dump_json(indent=2))
        else:
            render(report, Console(soft_wrap=False))
        raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILED)
