"""Token buckets and the TTL cache."""

from __future__ import annotations

import pytest

from neocloud.gateway.cache import MISSING, TTLCache
from neocloud.gateway.ratelimit import TokenBucketLimiter


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    lim = TokenBucketLimiter(rate=2.0, burst=3)
    assert [lim.acquire("t", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.acquire("t", now=100.0) == pytest.approx(0.5)  # one token per 0.5 s
    assert lim.acquire("t", now=100.25) == pytest.approx(0.25)
    assert lim.acquire("t", now=100.5) == 0.0
    assert lim.acquire("other", now=100.5) == 0.0  # buckets are per key
    # a long idle time refills to the burst size, not beyond
    assert [lim.acquire("t", now=200.0) for _ in range(4)][-1] > 0


def test_bucket_keys_are_bounded() -> None:
    lim = TokenBucketLimiter(rate=1.0, burst=1, max_keys=10)
    for i in range(100):
        lim.acquire(f"k{i}", now=float(i))
    assert len(lim._buckets) <= 10


def test_bucket_arguments() -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter(rate=0, burst=1)


def test_ttl_cache() -> None:
    cache: TTLCache[str, int | None] = TTLCache(max_entries=4)
    cache.put("a", 1, ttl=60)
    cache.put("none", None, ttl=60)  # None is a value, distinct from a miss
    cache.put("gone", 2, ttl=-1)
    assert cache.get("a") == 1 and cache.get("none", MISSING) is None
    assert cache.get("gone", MISSING) is MISSING
    for i in range(10):
        cache.put(f"k{i}", i, ttl=60)
    assert len(cache) <= 4
    cache.clear()
    assert cache.get("a", MISSING) is MISSING
