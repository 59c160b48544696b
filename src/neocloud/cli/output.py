"""Terminal output of the CLI: Rich consoles, tables, JSON, error lines, small formatters.

Machine output (``--json``) goes to stdout through :func:`print_json` and nothing else is
written to stdout by that command; progress, hints and errors go to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neocloud.errors import NeocloudError


#: stdout for tables and details; stderr for progress, notes and errors.
def _width(stream_is_tty: bool) -> int | None:
    """Rich's own width on a terminal; wide when piped, so tables never wrap cells."""
    return None if stream_is_tty else 200


out = Console(highlight=False, soft_wrap=False, width=_width(sys.stdout.isatty()))
err = Console(stderr=True, highlight=False, width=_width(sys.stderr.isatty()))

STATUS_STYLES = {
    "ready": "green",
    "degraded": "yellow",
    "pending": "yellow",
    "starting": "cyan",
    "scaled_to_zero": "dim",
    "failed": "red",
    "deleting": "magenta",
    "stopping": "magenta",
    "stopped": "dim",
    "cordoned": "yellow",
    "draining": "magenta",
    "not_ready": "red",
}


def to_jsonable(value: Any) -> Any:
    """Models (or lists/dicts of them) as plain JSON values (datetimes as ISO 8601)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """Write ``value`` as indented JSON to stdout (no Rich markup or highlighting)."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_error(exc: NeocloudError) -> None:
    """``Error: <message>`` (and the parameter at fault) in red on stderr."""
    line = Text("Error: ", style="bold red")
    line.append(exc.message, style="red")
    if exc.param:
        line.append(f" (param: {exc.param})", style="red")
    err.print(line)


def print_warnings(warnings: Sequence[str]) -> None:
    """``Warning: <message>`` in yellow on stderr for each warning the API returned with a
    submitted spec (e.g. an ``--env`` value that belongs in a ``--secret``)."""
    for message in warnings:
        line = Text("Warning: ", style="bold yellow")
        line.append(message, style="yellow")
        err.print(line)


def note(message: str) -> None:
    """A human message on stderr (plain text; no markup parsing)."""
    err.print(Text(message))


def status_text(value: str) -> Text:
    """A status word coloured by its meaning."""
    return Text(value, style=STATUS_STYLES.get(value, ""))


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    """A compact Rich table; cells that are not ``Text`` are shown as plain strings."""
    tbl = Table(title=title, box=None, header_style="bold", pad_edge=False, title_justify="left")
    for column in columns:
        tbl.add_column(column, overflow="fold")
    for row in rows:
        tbl.add_row(*(c if isinstance(c, Text) else Text(_cell(c)) for c in row))
    return tbl


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def age(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago, compactly: ``42s``, ``5m``, ``3h``, ``2d``; ``-`` when unknown.
    Naive datetimes are taken as UTC."""
    if when is None:
        return "-"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def usd(value: float) -> str:
    """A USD amount: cents for amounts of a dollar or more, more digits below."""
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.6f}".rstrip("0").rstrip(".")


def seconds(value: float) -> str:
    """A duration in seconds as ``12.3s`` / ``4m05s`` / ``2h03m``."""
    if value < 60:
        return f"{value:.1f}s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
