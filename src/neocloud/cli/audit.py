"""``neocloud audit``: who changed what in the workspace, and every denied attempt."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import print_json, table

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """``30m``, ``2h``, ``7d`` (that long ago) or an ISO 8601 time (UTC when no zone).

    Raises:
        typer.BadParameter: neither form.
    """
    if value is None:
        return None
    m = _DURATION.match(value.strip())
    if m:
        ago = timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
        return (now or datetime.now(UTC)) - ago
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{value!r}: expected a duration such as 30m, 2h, 7d or an ISO 8601 time "
            "such as 2026-12-01T09:00", param_hint="--since") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def audit(
    ctx: typer.Context,
    since: str | None = typer.Option(None, "--since", help="Only entries this recent: 30m, "
                                     "2h, 7d, or an ISO 8601 time."),
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="At most this many "
                              "(the newest)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The audit log (admin tokens; operators see every workspace), oldest first."""
    entries = client(ctx).audit.list(since=parse_since(since), limit=limit)
    if json_out:
        print_json(entries)
        return
    rows = [(e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), e.workspace or "-",
             e.token_name or "-", e.action, e.target, e.outcome.value, e.status)
            for e in entries]
    output.out.print(table(("TIME (UTC)", "WORKSPACE", "TOKEN", "ACTION", "TARGET", "OUTCOME",
                            "STATUS"), rows))


def register(app: typer.Typer) -> None:
    app.command()(audit)
