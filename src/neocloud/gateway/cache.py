"""A small time-to-live cache for token and route look-ups (monotonic clock, seconds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING = object()


class TTLCache(Generic[K, V]):
    """Maps keys to values that expire ``ttl`` seconds after being stored.

    Args:
        max_entries: capacity; when full, expired entries are dropped, then the oldest half.
    """

    __slots__ = ("_data", "max_entries")

    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: dict[K, tuple[float, V]] = {}
        self.max_entries = max_entries

    def get(self, key: K, default: object = _MISSING) -> V | object:
        """The live value of ``key``, or ``default`` (a private sentinel when not given)."""
        hit = self._data.get(key)
        if hit is None:
            return default
        if hit[0] < time.monotonic():
            self._data.pop(key, None)
            return default
        return hit[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds (nothing is stored when ``ttl <= 0``)."""
        if ttl <= 0:
            return
        if len(self._data) >= self.max_entries and key not in self._data:
            self._shrink()
        self._data[key] = (time.monotonic() + ttl, value)

    def discard(self, key: K) -> None:
        self._data.pop(key, None)

    def discard_where(self, pred: Callable[[K], bool]) -> None:
        """Drop every key for which ``pred(key)`` is true."""
        for k in [k for k in self._data if pred(k)]:
            del self._data[k]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def _shrink(self) -> None:
        now = time.monotonic()
        for k in [k for k, (exp, _) in self._data.items() if exp < now]:
            del self._data[k]
        if len(self._data) >= self.max_entries:
            for k in list(self._data)[: len(self._data) // 2]:
                del self._data[k]


MISSING = _MISSING
