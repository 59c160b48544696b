"""Per-invocation state of the CLI: the connection options and the SDK client built from
them (once, on first use)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import typer

from neocloud.errors import NeocloudError
from neocloud.sdk import Client


def check_option(value: str, option: str, check: Callable[..., None]) -> str:
    """``value`` of the connection option ``option`` once ``check(value, source=...)``
    accepts it; an empty value is an error too (it would silently fall back to the
    environment or the config file).

    Raises:
        typer.BadParameter: empty or rejected (a usage error naming ``option``).
    """
    if not value:
        raise typer.BadParameter(
            "must not be empty (leave the option out to use the environment or the config "
            "file)", param_hint=f"'{option}'")
    try:
        check(value, source=option)
    except NeocloudError as exc:
        raise typer.BadParameter(exc.message.removeprefix(f"{option}: "),
                                 param_hint=f"'{option}'") from None
    return value


@dataclass
class CliState:
    """``--url``/``--token`` given on the command line (``None``: resolve from the
    environment and the config file) and, for tests, an httpx transport to use."""

    url: str | None = None
    token: str | None = None
    timeout: float = 30.0
    transport: httpx.BaseTransport | None = None
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        """The SDK client, created on first use (reads the environment and config file)."""
        if self._client is None:
            self._client = Client(
                self.url, self.token, timeout=self.timeout, transport=self.transport
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def state(ctx: typer.Context) -> CliState:
    """The :class:`CliState` of the running command (created on the root context)."""
    found = ctx.find_object(CliState)
    if found is None:
        found = ctx.find_root().ensure_object(CliState)
    return found


def client(ctx: typer.Context) -> Client:
    """The SDK client of the running command."""
    return state(ctx).client()
