"""``dr serve-alerts``: the command that runs the alert receiver.

``cli/main.py`` adds it with :func:`register`. The receiver's modules (FastAPI, uvicorn,
Prefect's client) are imported only when the command runs, so ``dr --help`` stays fast.
Also runnable alone: ``python -m cli.alerts serve-alerts --port 8787``.
"""

from __future__ import annotations

import typer

from dr.errors import ConfigError

__all__ = ["main", "register"]

DEFAULT_HOST = "127.0.0.1"  # same as deployments.alerts.DEFAULT_HOST (not imported: slow)
DEFAULT_PORT = 8787


def register(app: typer.Typer) -> None:
    """Add the ``serve-alerts`` command to a typer app.

    Args:
        app: the ``dr`` command line's app.
    """

    @app.command("serve-alerts")
    def serve_alerts(
        config: str | None = typer.Option(
            None, "--config", "-c", help="dr.yaml to read (default: $DR_CONFIG or ./dr.yaml)."
        ),
        host: str = typer.Option(
            DEFAULT_HOST, "--host", help="Address to listen on (loopback by default)."
        ),
        port: int = typer.Option(DEFAULT_PORT, "--port", help="TCP port to listen on."),
    ) -> None:
        """Receive Alertmanager, Grafana, PagerDuty and plain JSON alerts; start DR runs.

        Needs alerts.bearer_token and/or alerts.hmac_secret and alerts.routes in dr.yaml,
        and a Prefect API ($PREFECT_API_URL or prefect_api_url in dr.yaml).
        """
        from deployments.alerts import serve

        try:
            serve(config, host, port)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            for key, reason in exc.problems:
                typer.echo(f"  {key}: {reason}", err=True)
            raise typer.Exit(2) from None


def main() -> None:
    """Run ``serve-alerts`` without the rest of the ``dr`` command line."""
    app = typer.Typer(add_completion=False, no_args_is_help=True)

    @app.callback()
    def _root() -> None:
        """DR pipelines alert receiver."""

    register(app)
    app()


if __name__ == "__main__":
    main()
