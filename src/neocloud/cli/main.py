"""The ``neocloud`` command: assembles the sub-commands and turns errors into messages.

One error boundary (:class:`_ErrorsAsMessages`, the root group) stands between every
command and the user, so no command prints a traceback:

* a :class:`neocloud.errors.NeocloudError` (from the server, the SDK or the CLI itself)
  becomes ``Error: <message>`` on stderr, exit code 1;
* bad command-line input (a usage error: wrong type, missing or empty value)
  is a usage message, exit code 2; a negative number where an option was expected
  (``neocloud scale web -1``: the parser reads ``-1`` as an option) says how to pass it
  (after ``--``; an option's value may be negative as is: ``--priority -1``); so is a
  control-plane setting that does not parse (``NEOCLOUD_PUBLIC_METRICS=2 neocloud up``:
  the variable and the values it takes are named, see ``cli.local``);
* an ``httpx`` error, an ``OSError`` (a path that cannot be created or read) or a
  ``UnicodeError`` becomes ``Error: <what failed>``, exit code 1;
* any other exception is a bug: ``Error: internal error (<type>: <message>)``, exit code
  1; ``NEOCLOUD_DEBUG=1`` shows its traceback instead;
* Ctrl-C exits 130.
"""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import typer
from typer.core import TyperGroup

from neocloud import __version__
from neocloud.cli import admin as admin_cli
from neocloud.cli import audit, deployments, inventory, local, quotas, usage, workspaces
from neocloud.cli import budgets as budget_cli
from neocloud.cli import events as event_cli
from neocloud.cli import invoices as invoice_cli
from neocloud.cli import jobs as job_cli
from neocloud.cli import join as join_cli
from neocloud.cli import pods as pod_cli
from neocloud.cli import prices as price_cli
from neocloud.cli import secrets as secret_cli
from neocloud.cli import simulate_autoscaling as simulate_cli
from neocloud.cli import volumes as volume_cli
from neocloud.cli.context import CliState, check_option
from neocloud.cli.output import note, print_error
from neocloud.config import DEFAULT_URL, check_token, check_url
from neocloud.errors import InvalidRequest, NeocloudError, Unavailable

#: Set to ``1`` to see the traceback of an unexpected error instead of its message.
DEBUG_ENV = "NEOCLOUD_DEBUG"


def os_error_message(exc: OSError) -> str:
    """``<path>: <reason>`` for a failed file operation (both paths of a rename)."""
    reason = exc.strerror or str(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


#: A token the option parser takes for an option although it is a number: ``-1``, ``-0.5``.
NEGATIVE_NUMBER = re.compile(r"-(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def explain_negative_number(exc: typer.TyperException, args: list[str]) -> None:
    """Rewrite the parser's "No such option: -1" (``exc``) into how to pass a negative
    number: as an argument after ``--`` (which ends the options), as an option's value as
    is. ``args``: the command line after the root's options (the parser names only the
    first character of a token it could not read, ``-2`` of ``-2.5``: the token is found
    there). Other errors are left alone."""
    name = getattr(exc, "option_name", None)
    if not isinstance(name, str) or not hasattr(exc, "possibilities") \
            or not hasattr(exc, "message"):
        return  # not "no such option"
    tokens = [a for a in args if a.startswith(name) and NEGATIVE_NUMBER.fullmatch(a)]
    if not tokens:
        return
    name = tokens[0]
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "neocloud COMMAND"
    exc.message = (
        f"{name} is not an option: a negative number given as an argument must come "
        f"after `--` (which ends the options), e.g. `{command} ... -- {name}`; an "
        f"option's value may be negative as is (`--OPTION {name}` or `--OPTION={name}`)")
    exc.possibilities = None


class _ErrorsAsMessages(TyperGroup):
    """Root group: the CLI's one error boundary (see the module docstring)."""

    def invoke(self, ctx: Any) -> Any:
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:
            explain_negative_number(exc, args)
            raise  # exit codes and usage errors: typer prints them
        except (typer.Exit, typer.Abort):
            raise
        except NeocloudError as exc:
            print_error(exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            note("Interrupted.")
            raise typer.Exit(130) from None
        except httpx.InvalidURL as exc:
            print_error(InvalidRequest(f"invalid URL: {exc}", param="url"))
            raise typer.Exit(1) from None
        except httpx.HTTPError as exc:
            print_error(Unavailable(f"request failed: {exc}"))
            raise typer.Exit(1) from None
        except OSError as exc:
            print_error(NeocloudError(os_error_message(exc)))
            raise typer.Exit(1) from None
        except UnicodeError as exc:
            print_error(InvalidRequest(f"text that cannot be encoded or decoded: {exc}"))
            raise typer.Exit(1) from None
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            print_error(NeocloudError(
                f"internal error ({type(exc).__name__}: {exc}); run again with "
                f"{DEBUG_ENV}=1 to see where"))
            raise typer.Exit(1) from None


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
        help=f"Control plane base URL (default: NEOCLOUD_URL, config file, {DEFAULT_URL}; "
             "a final /api/v1 is accepted).",
        show_default=False,
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        help="API token (default: NEOCLOUD_TOKEN, config file; an empty value counts as "
             "unset).",
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
    if url is not None:
        state.url = check_option(url, "--url", check_url)
    if token is not None:
        state.token = check_option(token, "--token", check_token)
    state.timeout = timeout
    ctx.call_on_close(state.close)


deployments.register(app)
workspaces.register(app)
inventory.register(app)
join_cli.register(inventory.node_app)
usage.register(app)
local.register(app)
quotas.register(app)
job_cli.register(app)
pod_cli.register(app)
secret_cli.register(app)
volume_cli.register(app)
price_cli.register(app)
invoice_cli.register(app)
budget_cli.register(app)
audit.register(app)
event_cli.register(app)
admin_cli.register(app)
simulate_cli.register(app)  # after local: puts its `simulate` under a group


def main() -> None:
    """Console-script entry point."""
    app()
