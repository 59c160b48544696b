"""The request as a handler may see it (declare a parameter annotated ``Request``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl


@dataclass(slots=True)
class Request:
    """One HTTP request.

    Attributes:
        method: ``GET`` or ``POST``.
        path: URL path without the query string.
        query_string: raw query string (bytes, undecoded).
        headers: ``(name, value)`` pairs as received; names are lower-case bytes.
        body: the whole request body (bytes).
    """

    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded as Latin-1."""
        key = name.lower().encode("latin-1")
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return default

    def query(self) -> dict[str, list[str]]:
        """The query string parsed into ``name -> [values]`` (UTF-8, blanks kept)."""
        out: dict[str, list[str]] = {}
        for k, v in parse_qsl(self.query_string.decode("utf-8", "replace"), keep_blank_values=True):
            out.setdefault(k, []).append(v)
        return out
