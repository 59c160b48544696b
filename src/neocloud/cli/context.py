"""Per-invocation state of the CLI: the connection options and the SDK client built from
them (once, on first use)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import typer

from neocloud.sdk import Client


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
