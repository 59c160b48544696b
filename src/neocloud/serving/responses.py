"""What a handler may return besides plain data, and how results become bytes.

- plain data (dict, list, str, numbers, pydantic models, dataclasses, numpy arrays):
  JSON (``application/json``), encoded with orjson;
- ``bytes``: sent as ``application/octet-stream``;
- :class:`Response`: raw body with its own status, media type and headers (images...);
- :class:`Stream`, or a (sync or async) generator: a streamed response. With the default
  media type ``text/event-stream`` each item becomes one Server-Sent Event (``str`` items
  as they are, other data as JSON; ``bytes`` items are passed through already framed);
  with any other media type items are sent as raw chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel

SSE = "text/event-stream"
_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

#: Headers of every streamed response: no caching, no proxy buffering (nginx honours
#: ``X-Accel-Buffering``).
STREAM_HEADERS: list[tuple[bytes, bytes]] = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass
class Response:
    """A raw response: ``content`` (bytes or str, UTF-8) with its status and media type."""

    content: bytes | str = b""
    status: int = 200
    media_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


@dataclass
class Stream:
    """A streamed response over ``items`` (an async or sync iterator).

    ``media_type`` ``text/event-stream`` (default) frames items as Server-Sent Events.
    """

    items: AsyncIterator[Any] | Iterator[Any]
    media_type: str = SSE
    headers: dict[str, str] = field(default_factory=dict)


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    tolist = getattr(obj, "tolist", None)  # torch tensors, numpy scalars
    if callable(tolist):
        return tolist()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def dumps(obj: Any) -> bytes:
    """JSON bytes of ``obj`` (pydantic models, numpy arrays and dataclasses included).

    Raises:
        TypeError: ``obj`` holds something that has no JSON form.
    """
    if isinstance(obj, BaseModel):
        return obj.model_dump_json().encode()
    return orjson.dumps(obj, default=_default, option=_OPTS)


def sse_event(item: Any) -> bytes:
    """One Server-Sent Event (``data: ...`` lines and a blank line) for ``item``.

    ``bytes`` pass through unchanged (already framed); ``str`` is the event text (each line
    gets its own ``data:`` prefix); anything else is JSON.
    """
    if isinstance(item, bytes):
        return item
    text = item if isinstance(item, str) else dumps(item).decode()
    if "\n" not in text and "\r" not in text:
        return b"data: " + text.encode() + b"\n\n"
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode() + b"\n"


def raw_chunk(item: Any) -> bytes:
    """One chunk of a non-SSE stream: bytes as they are, str as UTF-8, else JSON + newline."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return dumps(item) + b"\n"
