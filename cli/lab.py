"""``dr lab up | status | down``: the lab from the command line (wired into ``dr`` by cli.main).

Exit codes: 0 success (``status``: every component up), 1 a component is down or ``up``
failed, 2 no lab in the folder (``status``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from dr.errors import DRError
from lab.doctor import preflight
from lab.down import down
from lab.state import default_base_dir
from lab.status import status
from lab.up import up

lab_app = typer.Typer(
    help="The local lab: PostgreSQL primary + replica, S3, app, Prefect server, Slack stand-in.",
    no_args_is_help=True,
)

DIR_OPTION = typer.Option(
    None,
    "--dir",
    help="Lab folder (default: $DR_LAB_DIR, else ./.lab). The postgres user must traverse it.",
)


def _dir(path: Path | None) -> Path:
    return (path or default_base_dir()).absolute()


@lab_app.command("up")
def up_command(
    lab_dir: Path | None = DIR_OPTION,
    no_prefect: bool = typer.Option(
        False, "--no-prefect", help="Do not start the lab's Prefect server (faster)."
    ),
    engine: str = typer.Option(
        "auto", "--engine", help="Where the app runs: auto, podman or process."
    ),
    monitoring: bool = typer.Option(
        False,
        "--monitoring",
        help="Also Prometheus, an exporter per server, Alertmanager, dr serve-alerts and a "
        "worker: a dead primary is failed over with no human.",
    ),
) -> None:
    """Bring the lab up, or repair what is down (safe to run again)."""
    console = Console(stderr=True)
    try:
        # `dr doctor`'s checks first: a missing program stops here, naming its fix, before
        # any server or container exists.
        preflight(_dir(lab_dir), engine=engine, monitoring=monitoring)
        up(
            _dir(lab_dir),
            prefect=not no_prefect,
            engine=engine,
            monitoring=monitoring,
            console=console,
        )
    except (DRError, RuntimeError, OSError, psycopg.Error) as exc:
        console.print(f"[red]dr lab up failed:[/] {exc}")
        raise typer.Exit(1) from None
    _print_status(status(_dir(lab_dir)), Console())


@lab_app.command("status")
def status_command(
    lab_dir: Path | None = DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show each component of the lab: up or down, replication lag, heartbeat, archive."""
    report = status(_dir(lab_dir))
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_status(report, Console())
    if not report.get("exists"):
        raise typer.Exit(2)
    if not report.get("ok"):
        raise typer.Exit(1)


@lab_app.command("down")
def down_command(lab_dir: Path | None = DIR_OPTION) -> None:
    """Stop everything the lab started and remove its folder."""
    down(_dir(lab_dir), console=Console(stderr=True))


def _mark(up: Any) -> str:
    return "[green]up[/]" if up else "[red]down[/]"


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _print_status(report: dict[str, Any], console: Console) -> None:
    """The status as a rich table: one row per component."""
    if not report.get("exists"):
        console.print(f"no lab in {report.get('base_dir')}: run `dr lab up`")
        return
    table = Table(
        title=f"lab {report['base_dir']} — {'[green]ok[/]' if report['ok'] else '[red]NOT ok[/]'}"
    )
    table.add_column("component")
    table.add_column("state")
    table.add_column("details")
    for key in ("primary", "replica"):
        node = report[key]
        details = f"{node['role']} on 127.0.0.1:{node['port']} ({node['region']})"
        if node.get("state"):
            details += (
                f", {node['state']} from {node.get('upstream')}, lag {node['lag_bytes']} bytes"
                f" / {_num(node['lag_seconds'])} s"
            )
        table.add_row(node["name"], _mark(node["up"]), details)
    control = report["control"]
    table.add_row(
        "control", _mark(control["up"]), f"127.0.0.1:{control['port']} (prefect, dr_history)"
    )
    hb = report["heartbeat"]
    table.add_row(
        "heartbeat",
        _mark(hb["up"]),
        f"seq {hb['seq']} at {hb['ts']} ({_num(hb['age_seconds'])} s old) on {hb.get('node')}",
    )
    arch = report["archiver"]
    table.add_row(
        "wal archive",
        _mark(arch.get("up")),
        f"last {arch.get('last_archived_wal')} at {arch.get('last_archived_time')}, "
        f"failed {arch.get('failed_count')} — {report['repositories']['wal']['url']}",
    )
    for name, repo in report["repositories"].items():
        if name == "wal":
            continue
        note = f" [dim]({repo['note']})[/]" if repo.get("note") else ""
        table.add_row(f"repo {name}", _mark(repo["up"]), f"{repo['url']}{note}")
    app = report["app"]
    where = (
        f"container {app['name']} ({app.get('state')})"
        if app["engine"] == "podman"
        else f"process {app.get('pid')} ({app.get('state')})"
    )
    if report.get("engine_reason"):
        where += f" [dim]— fallback: {report['engine_reason']}[/]"
    table.add_row(f"app [{app['engine']}]", _mark(app["up"]), where)
    s3 = report["s3_endpoint"]
    table.add_row("s3 endpoint", _mark(s3["up"]), f"{s3['url']} [dim](moto, in memory)[/]")
    pf = report["prefect"]
    if pf["enabled"]:
        table.add_row("prefect", _mark(pf["up"]), f"UI {pf['ui_url']}  API {pf['api_url']}")
    else:
        table.add_row("prefect", "[dim]off[/]", "started with --no-prefect")
    sl = report["slack"]
    table.add_row("slack", _mark(sl["up"]), f"{sl['url']} (stand-in)")
    for name, part in (report.get("stack") or {}).items():
        detail = f" ({part['detail']})" if part.get("detail") else ""
        table.add_row(name, _mark(part["up"]), f"{part['url']}{detail}")
    _monitoring_rows(table, report.get("monitoring") or {})
    console.print(table)
    console.print(f"config: {report['config_path']}")


def _monitoring_rows(table: Table, mon: dict[str, Any]) -> None:
    """One row per part of the alert chain (``dr lab up --monitoring``)."""
    if not mon.get("enabled"):
        table.add_row("monitoring", "[dim]off[/]", "dr lab up --monitoring adds it")
        return
    for node, exp in mon["exporters"].items():
        table.add_row(
            f"exporter {node}",
            _mark(exp["up"]),
            f"{exp['url']} (Prometheus scrape: {exp['scrape']})",
        )
    prom = mon["prometheus"]
    firing = ", ".join(
        f"{a['alertname']} {a.get('node') or a.get('target')}" for a in prom["firing"]
    )
    table.add_row(
        "prometheus", _mark(prom["up"]), f"{prom['url']}; DR alerts firing: {firing or 'none'}"
    )
    am = mon["alertmanager"]
    table.add_row("alertmanager", _mark(am["up"]), f"{am['url']} -> {mon['receiver']['url']}")
    rc = mon["receiver"]
    table.add_row("alert receiver", _mark(rc["up"]), f"{rc['url']} (dr serve-alerts)")
    wk = mon["worker"]
    table.add_row(
        "worker",
        _mark(wk["up"]),
        f"{wk['name']} pid {wk['pid']} ({'online' if wk['online'] else 'not online'})",
    )
