"""The ``neocloud`` command: assembles the sub-commands and turns errors into messages.

Every :class:`neocloud.errors.NeocloudError` becomes ``Error: <message>`` on stderr and
exit code 1; bad command-line input is a usage error with exit code 2; Ctrl-C exits 130.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from neocloud import __version__
from neocloud.cli import admission, deployments, inventory, local, tenancy, usage
from neocloud.cli import jobs as job_cli
from neocloud.cli import pods as pod_cli
from neocloud.cli import secrets as secret_cli
from neocloud.cli import volumes as volume_cli
from neocloud.cli.context import CliState
from neocloud.cli.output import note, print_error
from neocloud.config import DEFAULT_URL
from neocloud.errors import NeocloudError


class _ErrorsAsMessages(TyperGroup):
    """Root group that prints neocloud errors instead of tracebacks."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except NeocloudError as exc:
            print_error(exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            note("Interrupted.")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="neocloud",
    cls=_ErrorsAsMessages,
    help="neocloud: run your own AI cloud. Start one with `neocloud up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"neocloud {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    url: str | None = typer.Option(
        None,
        "--url",
        help=f"Control plane URL (default: NEOCLOUD_URL, config file, {DEFAULT_URL}).",
        show_default=False,
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        help="API token (default: NEOCLOUD_TOKEN, config file).",
        show_default=False,
    ),
    timeout: float = typer.Option(
        30.0, "--request-timeout", min=0.1, help="Seconds allowed per API request."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    state = ctx.ensure_object(CliState)
    state.url = url or state.url
    state.token = token or state.token
    state.timeout = timeout
    ctx.call_on_close(state.close)


deployments.register(app)
tenancy.register(app)
inventory.register(app)
usage.register(app)
local.register(app)
admission.register(app)
job_cli.register(app)
pod_cli.register(app)
secret_cli.register(app)
volume_cli.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
