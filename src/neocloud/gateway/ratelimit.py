"""Per-token request rate limiting with token buckets.

Each token id owns a bucket of ``burst`` tokens that refills at ``rate`` tokens per second
(the classic token bucket, e.g. Tanenbaum, *Computer Networks*, §5.4). A request takes one
token; with an empty bucket the request is refused and told how long until one is back.
"""

from __future__ import annotations

import time


class TokenBucketLimiter:
    """Token buckets keyed by token id.

    Args:
        rate: refill rate, requests per second (> 0).
        burst: bucket capacity, requests (>= 1).
        max_keys: buckets kept; beyond it full (idle) buckets are dropped, which is lossless
            because a dropped bucket would be recreated full.
    """

    __slots__ = ("rate", "burst", "max_keys", "_buckets")

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, list[float]] = {}

    def acquire(self, key: str, now: float | None = None) -> float:
        """Take one token for ``key``.

        Returns:
            0.0 when the request may proceed, else the seconds until a token is available.
        """
        t = time.monotonic() if now is None else now
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(t)
            self._buckets[key] = [self.burst - 1.0, t]
            return 0.0
        tokens = min(self.burst, b[0] + (t - b[1]) * self.rate)
        b[1] = t
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            return 0.0
        b[0] = tokens
        return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        full = [
            k for k, (tok, last) in self._buckets.items()
            if tok + (now - last) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:  # every bucket busy: drop the oldest half
            for k in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[k]
