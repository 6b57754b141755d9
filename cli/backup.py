"""``dr backup --target T [--kind logical|base]``: take a backup now, from a terminal or cron.

Runs :func:`flows.backup.backup_flow` in this process (against ``PREFECT_API_URL``, else
the config's ``prefect_api_url``, else an ephemeral API), shows progress bars on a
terminal, then prints what was backed up; ``--json`` prints exactly one JSON object on
standard output (logs go to standard error). Exit codes: 0 backed up, 1 a database's
backup failed, 2 bad input (config, unknown target).

Prefect is imported only inside the command, after the API URL is settled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    err,
    out,
    prefect_api,
    print_config_error,
)
from dr.config import CONFIG_ENV_VAR, config_path, load_config
from dr.errors import ConfigError, redact

__all__ = ["register"]


def _print_result(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['kind']} backup of {result['target']}")
    for column in ("database", "backup id", "files", "sent", "unchanged", "MiB", "dump s",
                   "upload s"):  # fmt: skip
        table.add_column(column)
    for b in result["backups"]:
        table.add_row(
            escape(b["database"]),
            b["backup_id"],
            str(b["files"]),
            str(b["uploaded"]),
            str(b["unchanged"]) + (" (resumed)" if b["resumed"] else ""),
            f"{b['bytes'] / 2**20:.1f}",
            f"{b['dump_seconds']:.2f}",
            f"{b['upload_seconds']:.2f}",
        )
    out.print(table)
    age = result.get("wal_archive_age_seconds")
    if age is not None:
        verdict = "within" if result.get("wal_within_rpo") else "BEYOND"
        out.print(
            f"WAL archive: newest segment {result.get('wal_newest_segment')} is {age:.0f} s old,"
            f" {verdict} the RPO of {result['rpo_objective_seconds']:.0f} s"
        )
    for r in result.get("retention", []):
        if r["deleted"]:
            out.print(f"Retention deleted from {escape(r['folder'])}: {', '.join(r['deleted'])}")
    for w in result.get("warnings", []):
        out.print(f"[yellow]Warning:[/] {escape(w)}")
    for name, reason in result.get("failures", {}).items():
        out.print(f"[bold red]FAILED[/] {escape(name)}: {escape(redact(reason))}")
    out.print(f"Took {result['duration_seconds']:.1f} s.")


def register(app: typer.Typer) -> None:
    """Add ``dr backup`` to the command line."""

    @app.command("backup")
    def backup(
        target: str = typer.Option(..., "--target", "-t", help="Target in the config."),
        kind: str = typer.Option(
            "logical", "--kind", help="logical (pg_dump of every database) or base (PITR)."
        ),
        config: Path | None = typer.Option(
            None, "--config", "-c", help="Config file (default: $DR_CONFIG, ./dr.yaml, lab's)."
        ),
        staging_dir: Path | None = typer.Option(
            None,
            "--staging-dir",
            help="Local staging folder (kept to resume an interrupted run; on a file:// "
            "repository's filesystem its files are hard-linked into it, not copied).",
        ),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Back up a target now: dump, manifest, verified upload, retention, WAL age check."""
        if kind not in ("logical", "base"):
            err.print(f"[bold red]error:[/] --kind must be logical or base, not {kind!r}")
            raise typer.Exit(EXIT_BAD_INPUT)
        path = config_path(config)
        try:
            cfg = load_config(path)
            cfg.target(target)
        except ConfigError as exc:
            print_config_error(exc)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        previous = os.environ.get(CONFIG_ENV_VAR)
        os.environ[CONFIG_ENV_VAR] = str(path.absolute())
        try:
            with prefect_api(cfg):
                from flows.backup.flow import backup_flow

                state = backup_flow(
                    target=target,
                    kind=kind,
                    config_path=str(path.absolute()),
                    staging_dir=str(staging_dir) if staging_dir else None,
                    return_state=True,
                )
                data = state.result(raise_on_failure=False)
        except ConfigError as exc:
            print_config_error(exc)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        finally:
            if previous is None:
                os.environ.pop(CONFIG_ENV_VAR, None)
            else:
                os.environ[CONFIG_ENV_VAR] = previous
        if isinstance(data, BaseException) and hasattr(data, "result"):
            data = json.loads(data.result.model_dump_json())  # BackupFailed: show what ran
        if isinstance(data, BaseException):
            reason = redact(f"{type(data).__name__}: {data}")
            err.print(f"[bold red]backup failed:[/] {escape(reason)}")
            if json_out:
                typer.echo(json.dumps({"target": target, "kind": kind, "ok": False,
                                       "reason": reason}))  # fmt: skip
            code = EXIT_BAD_INPUT if isinstance(data, ConfigError) else EXIT_FAILED
            raise typer.Exit(code)
        if json_out:
            typer.echo(json.dumps(data))
        else:
            _print_result(data)
        raise typer.Exit(EXIT_OK if data.get("ok") else EXIT_FAILED)
