"""``dr evidence verify URL``: check an evidence bundle's checksums, as anyone can, any time.

A breach response writes its evidence once to the evidence repository (S3 Object Lock where
the bucket has it) with a ``manifest.json`` listing every file's SHA-256, and reports the
bundle's URL and the manifest's own SHA-256. This command re-reads the manifest, streams
every object, recomputes its SHA-256 and compares::

    dr evidence verify s3://dr-lab-evidence/lab/lab/breach/20250101T120000Z-1a2b3c4d \\
        --manifest-sha256 9f86d081884c7d65...

With ``--manifest-sha256`` (from the run's report) a replaced manifest is caught too. S3
endpoints and credentials come from the config's ``aws`` section (``--config``, else
``$DR_CONFIG``, ``./dr.yaml`` or the lab's), else boto3's default chain. ``--json`` prints
exactly one JSON object. Exit codes: 0 verified, 1 not verified (a file missing or
altered, or the manifest replaced), 2 bad input (URL, config).
"""

from __future__ import annotations

import json
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
from dr.config import DRConfig, config_path, load_config
from dr.errors import ConfigError, StorageError, redact

__all__ = ["register", "verify_url"]


evidence_app = typer.Typer(help="Evidence bundles of breach responses.", no_args_is_help=True)


def _load_optional(config: Path | None) -> DRConfig | None:
    """The config when one is given or found; None when there is none (default chain)."""
    path = config_path(config)
    if config is None and not path.exists():
        return None
    return load_config(path)


def verify_url(url: str, cfg: DRConfig | None, manifest_sha256: str | None = None) -> Any:
    """Verify the bundle at ``url`` (``s3://...`` or ``file:///...``).

    Args:
        url: the bundle's folder (the one holding ``manifest.json``).
        cfg: a config whose ``aws`` section reaches the bucket, or None.
        manifest_sha256: the manifest's SHA-256 as recorded in the run's report.

    Returns:
        A :class:`tasks.evidence.VerifyReport`.

    Raises:
        ConfigError: the URL is neither form.
        StorageError: the repository cannot be read.
    """
    from tasks.evidence import manifest as evidence_manifest
    from tasks.evidence import verify as evidence_verify
    from tasks.storage import client as storage_client

    url = url.rstrip("/")
    if url.endswith("/" + evidence_manifest.MANIFEST_NAME):
        url = url[: -len(evidence_manifest.MANIFEST_NAME) - 1]
    if url.startswith("s3://"):
        client = storage_client.make_s3_client(cfg.aws if cfg is not None else None)
        repo = storage_client.open_repository(url, s3_client=client)
    else:
        repo = storage_client.open_repository(url)
    return evidence_verify.verify_bundle(repo, "", expected_manifest_sha256=manifest_sha256)


def _print(report: Any) -> None:
    table = Table(title=f"evidence bundle {report.bundle_id or '?'}")
    for column in ("file", "bytes", "sha256", "status", "retention"):
        table.add_column(column)
    for item in report.items:
        lock = item.lock_mode or "-"
        if item.retain_until is not None:
            lock += f" until {item.retain_until:%Y-%m-%d}"
        color = "green" if item.status == "ok" else "red"
        table.add_row(
            escape(item.path),
            "" if item.size_bytes is None else str(item.size_bytes),
            item.expected_sha256[:16],
            f"[{color}]{item.status}[/]" + (f" {escape(item.detail)}" if item.detail else ""),
            lock,
        )
    out.print(table)
    out.print(f"Manifest sha256: {report.manifest_sha256 or 'unreadable'}")
    for missing in report.missing_evidence:
        out.print(f"[yellow]Not collected:[/] {escape(missing.name)}: {escape(missing.reason)}")
    for key in report.unlisted:
        out.print(f"[yellow]Not in the manifest:[/] {escape(key)}")
    for problem in report.problems:
        out.print(f"[red]Problem:[/] {escape(problem)}")
    verdict = "[bold green]VERIFIED[/]" if report.ok else "[bold red]NOT VERIFIED[/]"
    complete = "" if report.complete in (None, True) else " (the bundle says it is incomplete)"
    out.print(f"{verdict}{complete}")


@evidence_app.command("verify")
def verify(
    url: str = typer.Argument(..., help="The bundle: s3://bucket/prefix/... or file:///..."),
    manifest_sha256: str | None = typer.Option(
        None, "--manifest-sha256", help="The manifest's SHA-256 from the run's report."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Config for S3 endpoint and credentials."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Re-read an evidence bundle and check every file's SHA-256 against its manifest."""
    try:
        cfg = _load_optional(config)
    except ConfigError as exc:
        print_config_error(exc)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        with prefect_api(cfg):
            report = verify_url(url, cfg, manifest_sha256)
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except StorageError as exc:
        err.print(f"[bold red]cannot read the bundle:[/] {escape(redact(str(exc)))}")
        if json_out:
            typer.echo(json.dumps({"url": url, "ok": False, "problems": [redact(str(exc))]}))
        raise typer.Exit(EXIT_FAILED) from None
    if json_out:
        typer.echo(report.model_dump_json())
    elif report.manifest_sha256 is None:
        # Nothing to tabulate: say what is missing instead of printing an empty table.
        err.print(
            f"[bold red]no evidence bundle at {escape(url)}:[/] "
            + escape("; ".join(report.problems) or "the manifest cannot be read")
        )
    else:
        _print(report)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILED)


def register(app: typer.Typer) -> None:
    """Add ``evidence verify`` to the ``dr`` application.

    Args:
        app: the Typer application (``cli.main.app``, or a test's own).
    """
    app.add_typer(evidence_app, name="evidence")
