"""Integer micro-dollar arithmetic for every price in neocloud (1 USD = 1,000,000 µ$).

No float ever carries money: a duration is first turned into whole microseconds, then
multiplied by the integer price, and divided once with rounding half up. Each usage record
is rounded on its own, so a record is off the exact product by at most 0.5 µ$ and an
invoice (a sum of records) equals the sum of its records exactly.
"""

from __future__ import annotations

#: Bytes in one GiB (storage is priced per GiB-hour).
GIB = 1 << 30
_US_PER_HOUR = 3_600_000_000


def _div_round(num: int, den: int) -> int:
    """``num / den`` rounded half up, for ``num >= 0`` and ``den > 0``."""
    return (2 * num + den) // (2 * den)


def micros_of_usd(usd: float) -> int:
    """A USD amount (such as a shape's ``price_per_hour_usd``) in micro-dollars, rounded."""
    return max(0, round(usd * 1_000_000))


def whole_us(seconds: float) -> int:
    """``seconds`` as whole microseconds (rounded; negative becomes 0)."""
    return max(0, round(seconds * 1_000_000))


def running_micros(per_hour_micros: int, seconds: float) -> int:
    """µ$ for ``seconds`` of running time at ``per_hour_micros`` per hour (per-second billing
    at microsecond precision)."""
    return _div_round(whole_us(seconds) * per_hour_micros, _US_PER_HOUR)


def tokens_micros(per_million_micros: int, tokens: int) -> int:
    """µ$ for ``tokens`` at ``per_million_micros`` per million tokens."""
    return _div_round(max(0, tokens) * per_million_micros, 1_000_000)


def storage_micros(per_gib_hour_micros: int, size_bytes: int, seconds: float) -> int:
    """µ$ for holding ``size_bytes`` for ``seconds`` at ``per_gib_hour_micros`` per GiB-hour."""
    return _div_round(max(0, size_bytes) * whole_us(seconds) * per_gib_hour_micros,
                      GIB * _US_PER_HOUR)


def split_even(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` µ$ in proportion to ``weights`` so the parts sum to ``total`` exactly
    (largest remainder method: floor each share, then hand the leftover micro-dollars to
    the largest fractional parts). All zero weights give all zero parts but the last."""
    if not weights:
        return []
    wsum = sum(weights)
    if wsum <= 0:
        return [0] * (len(weights) - 1) + [total]
    exact = [total * w / wsum for w in weights]
    parts = [int(x) for x in exact]
    left = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: exact[i] - parts[i], reverse=True)
    for i in order[:left]:
        parts[i] += 1
    return parts
