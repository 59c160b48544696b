"""The gateway's token cache: one look-up per token at a time, refreshed ahead, revocable."""

from __future__ import annotations

import asyncio
import json

import pytest
from tests.unit.gateway.test_gateway_app import call

from neocloud.gateway import GatewaySettings, Principal, Route, create_gateway
from neocloud.gateway.static import StaticRouteTable
from neocloud.gateway.tokens import TokenCache

P = Principal("t1", "ws", "member")


class SlowAuth:
    """Reads ``tokens`` when asked (a database read), answers once ``release`` is set (or
    the look-up's own event in ``gates``, when given); counts look-ups."""

    def __init__(self) -> None:
        self.tokens: dict[str, Principal] = {"tok": P}
        self.calls = 0
        self.release = asyncio.Event()
        self.gates: list[asyncio.Event] = []
        self.fail: Exception | None = None

    async def authenticate(self, token: str) -> Principal | None:
        self.calls += 1
        answer = self.tokens.get(token)
        await (self.gates[self.calls - 1] if self.gates else self.release).wait()
        if self.fail is not None:
            raise self.fail
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_concurrent_requests_on_an_unknown_entry_share_one_lookup() -> None:
    async def main() -> None:
        auth = SlowAuth()
        cache = TokenCache(auth, ttl_s=5.0, negative_ttl_s=1.0)
        waiting = [asyncio.ensure_future(cache.principal("tok")) for _ in range(32)]
        await _settle()
        assert auth.calls == 1  # before: 32 look-ups, one per waiting request
        auth.release.set()
        assert await asyncio.gather(*waiting) == [P] * 32
        assert await cache.principal("tok") is P and auth.calls == 1

    asyncio.run(main())


def test_an_aging_answer_is_refreshed_in_the_background_and_never_used_past_its_ttl(
) -> None:
    async def main() -> None:
        auth, clock = SlowAuth(), Clock()
        auth.release.set()
        cache = TokenCache(auth, ttl_s=4.0, negative_ttl_s=1.0, clock=clock)
        assert await cache.principal("tok") is P and auth.calls == 1
        clock.now += 1.0  # young: from memory, no look-up
        assert await cache.principal("tok") is P and auth.calls == 1
        auth.release.clear()
        del auth.tokens["tok"]  # revoked by another gateway's control plane
        clock.now += 1.5  # past half the TTL: answered at once, one refresh starts
        assert await asyncio.wait_for(cache.principal("tok"), 0.5) is P
        assert await asyncio.wait_for(cache.principal("tok"), 0.5) is P
        await _settle()
        assert auth.calls == 2
        auth.release.set()
        await _settle()
        assert await cache.principal("tok") is None  # the refresh's answer is in force
        # an answer is used for at most ttl_s from its look-up's start
        auth.tokens["tok"] = P
        auth.release.clear()
        clock.now += 10.0  # the negative answer expired: this request waits
        pending = asyncio.ensure_future(cache.principal("tok"))
        await _settle()
        assert not pending.done() and auth.calls == 3
        auth.release.set()
        assert await pending is P
        clock.now += 4.0  # exactly ttl_s after that look-up started: expired, so it waits
        auth.release.clear()
        pending = asyncio.ensure_future(cache.principal("tok"))
        await _settle()
        assert not pending.done()
        auth.release.set()
        assert await pending is P

    asyncio.run(main())


def test_a_lookup_started_before_a_revoke_is_neither_joined_nor_stored() -> None:
    async def main() -> None:
        auth = SlowAuth()
        auth.gates = [asyncio.Event(), asyncio.Event()]
        cache = TokenCache(auth, ttl_s=60.0, negative_ttl_s=60.0)
        before = asyncio.ensure_future(cache.principal("tok"))  # reads the live row
        await _settle()
        del auth.tokens["tok"]  # revoked...
        cache.clear()  # ...and the gateway told
        after = asyncio.ensure_future(cache.principal("tok"))
        await _settle()
        assert auth.calls == 2  # a look-up of its own, not the one that read the old row
        auth.gates[1].set()
        assert await after is None
        auth.gates[0].set()  # the old look-up ends last, with the stale answer
        assert await before is P  # the request that arrived before the revoke
        assert await cache.principal("tok") is None and auth.calls == 2

    asyncio.run(main())


def test_clear_during_a_lookup_never_stores_its_stale_answer() -> None:
    async def main() -> None:
        auth = SlowAuth()
        cache = TokenCache(auth, ttl_s=60.0, negative_ttl_s=60.0)
        before = asyncio.ensure_future(cache.principal("tok"))
        await _settle()
        cache.clear()  # the token was revoked while its look-up ran
        auth.release.set()
        assert await before is P  # the request that arrived before the revoke
        del auth.tokens["tok"]
        assert await cache.principal("tok") is None  # asked again, not the stale answer
        assert auth.calls == 2

    asyncio.run(main())


def test_lookup_errors_reach_the_waiting_requests_and_failed_refreshes_keep_the_answer(
) -> None:
    async def main() -> None:
        auth, clock = SlowAuth(), Clock()
        auth.fail = RuntimeError("database is down")
        cache = TokenCache(auth, ttl_s=4.0, negative_ttl_s=1.0, clock=clock)
        auth.release.set()
        with pytest.raises(RuntimeError, match="database is down"):
            await cache.principal("tok")
        auth.fail = None
        assert await cache.principal("tok") is P  # nothing was stored: asked again
        auth.fail = RuntimeError("database is down")
        clock.now += 3.0
        assert await cache.principal("tok") is P  # refresh fails in the background
        await _settle()
        assert auth.calls == 3
        assert await cache.principal("tok") is P  # the answer in hand; another refresh
        await _settle()
        assert auth.calls == 4
        clock.now += 1.5  # expired: the error reaches the request now
        with pytest.raises(RuntimeError):
            await cache.principal("tok")

    asyncio.run(main())


def test_unknown_tokens_are_remembered_briefly_and_entries_are_bounded() -> None:
    async def main() -> None:
        auth, clock = SlowAuth(), Clock()
        auth.release.set()
        cache = TokenCache(auth, ttl_s=5.0, negative_ttl_s=1.0, clock=clock, max_entries=8)
        assert await cache.principal("bad") is None
        clock.now += 0.9  # negative answers are not refreshed ahead
        assert await cache.principal("bad") is None and auth.calls == 1
        clock.now += 0.2
        assert await cache.principal("bad") is None and auth.calls == 2
        for i in range(50):
            await cache.principal(f"x{i}")
        assert len(cache) <= 8
        with pytest.raises(ValueError):
            TokenCache(auth, 1.0, 1.0, refresh_after=0)

    asyncio.run(main())


def test_gateway_asks_once_for_concurrent_requests_and_refuses_after_revoke() -> None:
    async def main() -> None:
        auth = SlowAuth()
        routes = StaticRouteTable([Route("d1", "ws", "m", ())])
        gw = create_gateway(routes, auth, settings=GatewaySettings(auth_cache_ttl_s=60))
        calls = [asyncio.ensure_future(call(gw, "GET", "/v1/models")) for _ in range(16)]
        await _settle()
        auth.release.set()
        assert [s for s, _, _ in await asyncio.gather(*calls)] == [200] * 16
        assert auth.calls == 1
        del auth.tokens["tok"]
        status, _, _ = await call(gw, "GET", "/v1/models")
        assert status == 200  # cached
        gw.invalidate_tokens()
        status, _, body = await call(gw, "GET", "/v1/models")
        assert status == 401, json.dumps(body)

    asyncio.run(main())


def test_gateway_refuses_a_token_revoked_while_its_lookup_ran() -> None:
    """Before: the look-up in flight at the revoke stored its stale answer after
    ``invalidate_tokens()``, and the revoked token was accepted for another TTL."""

    async def main() -> None:
        auth = SlowAuth()
        auth.gates = [asyncio.Event(), asyncio.Event(), asyncio.Event()]
        auth.gates[2].set()
        routes = StaticRouteTable([Route("d1", "ws", "m", ())])
        gw = create_gateway(routes, auth, settings=GatewaySettings(auth_cache_ttl_s=60))
        before = asyncio.ensure_future(call(gw, "GET", "/v1/models"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert auth.calls == 1
        del auth.tokens["tok"]
        gw.invalidate_tokens()
        after = asyncio.ensure_future(call(gw, "GET", "/v1/models"))
        for _ in range(20):
            await asyncio.sleep(0)
        auth.gates[1].set()
        assert (await after)[0] == 401
        auth.gates[0].set()  # the look-up that read the row before the revoke ends last
        assert (await before)[0] == 200
        assert (await call(gw, "GET", "/v1/models"))[0] == 401

    asyncio.run(main())
