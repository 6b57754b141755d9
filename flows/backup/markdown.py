"""The backup run's report for the Prefect UI."""

from __future__ import annotations

from flows.backup.models import BackupRunResult

__all__ = ["render_markdown"]


def render_markdown(result: BackupRunResult) -> str:
    """A short report of a backup run for the Prefect UI."""
    lines = [
        f"# {result.kind} backup of `{result.target}`: {'ok' if result.ok else 'FAILED'}",
        "",
        f"{result.started_at:%Y-%m-%d %H:%M:%S} UTC, {result.duration_seconds:.1f} s",
        "",
        "| database | backup id | files | sent | unchanged | MiB | dump s | upload s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for b in result.backups:
        lines.append(
            f"| {b.database} | `{b.backup_id}` | {b.files} | {b.uploaded} | {b.unchanged} "
            f"| {b.bytes / 2**20:.1f} | {b.dump_seconds:.1f} | {b.upload_seconds:.1f} |"
        )
    for name, reason in result.failures.items():
        lines.append(f"| {name} | FAILED: {reason} | | | | | | |")
    if result.files:
        lines += ["", "| files | location | backup id | objects | MiB |", "|---|---|---|---:|---:|"]
        lines += [
            f"| {f.source} | `{f.location}` | `{f.backup_id}` | {f.objects} | {f.bytes / 2**20:.1f} |"
            for f in result.files
        ]
    if result.wal_archive_age_seconds is not None:
        lines += [
            "",
            f"Newest archived WAL segment `{result.wal_newest_segment}`: "
            f"{result.wal_archive_age_seconds:.0f} s old (RPO {result.rpo_objective_seconds:.0f} s).",
        ]
    for r in result.retention:
        if r.deleted:
            lines.append(f"\nRetention on `{r.folder}` deleted: {', '.join(r.deleted)}")
    for w in result.warnings:
        lines.append(f"\n**Warning:** {w}")
    return "\n".join(lines) + "\n"
