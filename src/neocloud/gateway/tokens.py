"""Token look-ups kept off the request path: cached, refreshed ahead, one at a time.

The host's :class:`~neocloud.gateway.types.Authenticator` usually asks a database (the
control plane's hashes the token and reads its row). Asking it for every request, or
letting every request that finds an expired entry ask at once, puts database round trips
in the hot path: with 32 streams in flight on one token, each expiry of the cached answer
started 32 identical look-ups, queued on a handful of worker threads, and every request
that arrived meanwhile waited for them.

:class:`TokenCache` answers from memory and asks the authenticator at most once per token
at a time:

- a known token's answer is used for at most ``ttl_s`` seconds, counted from the moment
  its look-up *started* (so a revocation takes effect within ``ttl_s``, as before);
- once an answer is older than ``refresh_after`` of ``ttl_s``, the next request starts a
  look-up in the background and is itself answered from memory; under steady traffic no
  request waits for the authenticator;
- a request that finds no usable answer waits for the one look-up in flight for that
  token (started by it or by another request) — never a second one;
- unknown tokens (``None``) are remembered for ``negative_ttl_s`` and not refreshed ahead;
- :meth:`TokenCache.clear` (after a token is revoked) drops every answer *and* every
  look-up in flight: a look-up that started before the revocation is never stored nor
  handed to a request that arrives after it.

An authenticator error reaches the requests waiting for that look-up (the gateway then
answers 500, as without the cache); a background refresh that fails is logged and the
answer in hand is used until it expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from neocloud.gateway.types import Authenticator, Principal

log = logging.getLogger("neocloud.gateway")


class _Entry:
    __slots__ = ("principal", "refresh_at", "expires_at")

    def __init__(self, principal: Principal | None, refresh_at: float, expires_at: float):
        self.principal = principal
        self.refresh_at = refresh_at
        self.expires_at = expires_at


class TokenCache:
    """Principals of bearer tokens, from ``auth``, cached (see module doc).

    Args:
        auth: the host's authenticator.
        ttl_s: longest use of a known token's answer, seconds (0: ask every time, still
            one look-up per token at a time).
        negative_ttl_s: how long an unknown token is remembered, seconds.
        refresh_after: fraction of ``ttl_s`` after which a request starts a background
            refresh (0 < refresh_after <= 1; 1 turns refreshing ahead off).
        max_entries: tokens remembered; when full, expired answers are dropped, then the
            oldest half.
        clock: monotonic seconds (tests pass their own).

    Raises:
        ValueError: for a ``refresh_after`` outside (0, 1].
    """

    def __init__(
        self,
        auth: Authenticator,
        ttl_s: float,
        negative_ttl_s: float,
        *,
        refresh_after: float = 0.5,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < refresh_after <= 1:
            raise ValueError("refresh_after must be in (0, 1]")
        self._auth = auth
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.refresh_after = refresh_after
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[Principal | None]] = {}
        self.lookups = 0  # look-ups started (for tests and benchmarks)

    async def principal(self, token: str) -> Principal | None:
        """The principal of ``token``, or ``None`` for an unknown token.

        Raises:
            Exception: whatever the authenticator raised for the look-up this waited for.
        """
        now = self._clock()
        e = self._entries.get(token)
        if e is not None and now < e.expires_at:
            if now >= e.refresh_at and token not in self._inflight:
                self._start(token, now).add_done_callback(_log_failed_refresh)
            return e.principal
        task = self._inflight.get(token)
        if task is None:
            task = self._start(token, now)
            task.add_done_callback(_retrieve)
        return await asyncio.shield(task)  # one waiter's cancellation leaves the others

    def clear(self) -> None:
        """Forget every answer and every look-up in flight (call after a revocation)."""
        self._entries.clear()
        self._inflight.clear()  # their results are dropped (see _lookup)

    def __len__(self) -> int:
        return len(self._entries)

    def _start(self, token: str, now: float) -> asyncio.Task[Principal | None]:
        self.lookups += 1
        task = asyncio.get_running_loop().create_task(self._lookup(token, now))
        self._inflight[token] = task
        return task

    async def _lookup(self, token: str, started: float) -> Principal | None:
        try:
            principal = await self._auth.authenticate(token)
        finally:
            mine = self._inflight.get(token) is asyncio.current_task()
            if mine:
                del self._inflight[token]
        if mine:  # not cleared meanwhile: a revocation after `started` did not happen
            ttl = self.ttl_s if principal is not None else self.negative_ttl_s
            if ttl > 0:
                if len(self._entries) >= self.max_entries and token not in self._entries:
                    self._shrink()
                refresh = ttl * self.refresh_after if principal is not None else ttl
                self._entries[token] = _Entry(principal, started + refresh, started + ttl)
        return principal

    def _shrink(self) -> None:
        now = self._clock()
        for k in [k for k, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[k]
        if len(self._entries) >= self.max_entries:
            for k in list(self._entries)[: len(self._entries) // 2]:
                del self._entries[k]


def _retrieve(task: asyncio.Task[Principal | None]) -> None:
    """Mark a failed look-up's error as seen (its waiters, if any are left, raise it)."""
    if not task.cancelled():
        task.exception()


def _log_failed_refresh(task: asyncio.Task[Principal | None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("background token refresh failed: %s", task.exception())
