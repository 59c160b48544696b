"""Token counts from responses, read from the bytes as they pass through.

OpenAI-style responses carry ``"usage": {"prompt_tokens": P, "completion_tokens": C, ...}``
at the top level of a JSON body, and a stream asked with ``stream_options.include_usage``
carries it in its last ``data:`` event before ``data: [DONE]``. The gateway never decodes
whole responses: :class:`UsageScanner` keeps references to the first and the last
``limit`` bytes as they are forwarded, and :func:`find_usage` looks for the last
``"usage": {...}`` object in them once the response has been sent (so the client never
waits for it). Inside a JSON string a key-like ``"usage"`` is escaped (``\\"usage\\"``), so
the search cannot be fooled by generated text.
"""

from __future__ import annotations

import collections
import json

_DECODER = json.JSONDecoder()
_KEY = b'"usage"'
_WS = b" \t\r\n"


class UsageScanner:
    """Keeps the first ``limit`` bytes (when ``keep_head``) and the last ``limit`` bytes.

    Args:
        limit: bytes kept at each end.
        keep_head: keep the head too (JSON bodies); streams only need the tail.
    """

    __slots__ = ("limit", "keep_head", "_head", "_head_len", "_tail", "_tail_len")

    def __init__(self, limit: int, keep_head: bool) -> None:
        self.limit = limit
        self.keep_head = keep_head
        self._head: list[bytes] = []
        self._head_len = 0
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_len = 0

    def feed(self, chunk: bytes) -> None:
        """Note one forwarded piece of the body (kept by reference, not copied)."""
        if self.keep_head and self._head_len < self.limit:
            self._head.append(chunk)
            self._head_len += len(chunk)
            return
        tail = self._tail
        tail.append(chunk)
        self._tail_len += len(chunk)
        while len(tail) > 1 and self._tail_len - len(tail[0]) >= self.limit:
            self._tail_len -= len(tail.popleft())

    def found(self) -> tuple[int, int] | None:
        """``(prompt_tokens, completion_tokens)`` of the last usage object seen, or
        ``None`` when the body carried none."""
        if self._tail:
            found = find_usage(b"".join(self._tail))
            if found is not None:
                return found
        if self._head:
            found = find_usage(b"".join(self._head))
            if found is not None:
                return found
        return None

    def tokens(self) -> tuple[int, int]:
        """``(prompt_tokens, completion_tokens)`` of the last usage object seen, else (0, 0)."""
        return self.found() or (0, 0)


def _count(obj: dict[str, object], key: str) -> int:
    v = obj.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def find_usage(data: bytes) -> tuple[int, int] | None:
    """The ``(prompt_tokens, completion_tokens)`` of the last ``"usage": {...}`` in ``data``.

    Returns ``None`` when no usage object is found (``"usage": null`` does not count).
    Missing or non-integer counts read as 0.
    """
    end = len(data)
    n = len(data)
    while True:
        pos = data.rfind(_KEY, 0, end)
        if pos < 0:
            return None
        end = pos
        j = pos + len(_KEY)
        while j < n and data[j] in _WS:
            j += 1
        if j >= n or data[j] != 0x3A:  # ':'
            continue
        j += 1
        while j < n and data[j] in _WS:
            j += 1
        if j >= n or data[j] != 0x7B:  # '{'
            continue
        try:
            obj, _ = _DECODER.raw_decode(data[j:].decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(obj, dict):
            return (_count(obj, "prompt_tokens"), _count(obj, "completion_tokens"))
