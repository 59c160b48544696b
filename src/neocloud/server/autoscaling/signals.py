"""Samples of a deployment's load and the window averages the policies read.

A :class:`Sample` is one observation of a whole deployment at one instant (totals over
its replicas, as the gateway and the replicas' ``/metrics`` report them). Policies get a
window of samples, oldest first, and average the chosen signal over the part of it that
falls in a look-back window ending at ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neocloud.models.autoscaling import AutoscalingSignal


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation of a deployment; every load field is a total over its replicas.

    Attributes:
        at: when it was observed, seconds on the caller's clock (same clock as ``now``).
        ready_replicas: replicas ready to serve at that instant.
        in_flight: requests in progress or held at the gateway (count).
        held: of those, requests held because no replica was ready (count).
        requests_per_s: arrivals per second since the previous sample.
        queue_depth: requests queued in replicas, not yet served (count; None: unknown).
        tokens_in_flight: prompt + generated tokens of the requests engines hold.
        kv_cache_use: sum over replicas of the fraction of KV cache in use (0..ready).
        waiting_requests: requests engines accepted but have not scheduled yet.
    """

    at: float
    ready_replicas: int
    in_flight: int = 0
    held: int = 0
    requests_per_s: float = 0.0
    queue_depth: float | None = None
    tokens_in_flight: float | None = None
    kv_cache_use: float | None = None
    waiting_requests: float | None = None

    def value(self, signal: AutoscalingSignal) -> float | None:
        """The deployment total of ``signal`` in this sample (None when not reported)."""
        if signal is AutoscalingSignal.in_flight:
            return float(self.in_flight)
        if signal is AutoscalingSignal.requests_per_s:
            return self.requests_per_s
        if signal is AutoscalingSignal.queue_depth:
            return self.queue_depth
        if signal is AutoscalingSignal.tokens_in_flight:
            return self.tokens_in_flight
        if signal is AutoscalingSignal.kv_cache_use:
            return self.kv_cache_use
        return self.waiting_requests

    @property
    def busy(self) -> bool:
        """True when any request arrived, is in flight or is held."""
        return self.in_flight > 0 or self.held > 0 or self.requests_per_s > 0


def in_window(samples: Sequence[Sample], now: float, window_s: float) -> list[Sample]:
    """The samples with ``now - window_s < at <= now`` (oldest first, as given)."""
    start = now - window_s
    return [s for s in samples if start < s.at <= now]


def window_mean(
    samples: Sequence[Sample], signal: AutoscalingSignal, now: float, window_s: float
) -> tuple[float | None, int]:
    """Mean of ``signal`` over the samples in the window, and how many had a value.

    Samples are taken at regular ticks, so the plain mean is the time average. A sample
    that does not report the signal is skipped; ``(None, 0)`` when none does.
    """
    total = 0.0
    n = 0
    for s in in_window(samples, now, window_s):
        v = s.value(signal)
        if v is not None:
            total += v
            n += 1
    return (total / n if n else None), n


class SampleWindow:
    """The recent samples of one deployment, oldest first, kept for ``keep_s`` seconds.

    The caller appends one sample per tick and passes ``samples()`` to the policy;
    ``keep_s`` should be at least the policy's ``history_s``. A sample older than the
    newest one is refused (the window is in time order).
    """

    def __init__(self, keep_s: float) -> None:
        if keep_s <= 0:
            raise ValueError("keep_s must be positive")
        self.keep_s = keep_s
        self._samples: list[Sample] = []

    def add(self, sample: Sample) -> None:
        """Append ``sample`` and drop the samples older than ``keep_s`` before it.

        Raises:
            ValueError: ``sample.at`` is before the newest sample's.
        """
        if self._samples and sample.at < self._samples[-1].at:
            raise ValueError(f"sample at {sample.at} is older than the newest one "
                             f"({self._samples[-1].at})")
        self._samples.append(sample)
        start = sample.at - self.keep_s
        drop = 0
        while drop < len(self._samples) and self._samples[drop].at <= start:
            drop += 1
        if drop:
            del self._samples[:drop]

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def __len__(self) -> int:
        return len(self._samples)


class ArrivalRate:
    """Arrivals per second between ticks, from a counter that only rises.

    The gateway counts every request routed to a deployment (``requests_total``); the
    difference between two ticks over the time between them is the arrival rate of that
    tick, which is what a sample needs (the gateway's own ``request_rate_per_s`` is
    already a 60 s average, and averaging it again over the stable window would blur a
    step twice). A counter that goes down (the gateway restarted) restarts the rate.
    """

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def update(self, at: float, total: int) -> float:
        """The rate since the previous call (0.0 at the first call or after a reset)."""
        last, self._last = self._last, (at, total)
        if last is None or total < last[1] or at <= last[0]:
            return 0.0
        return (total - last[1]) / (at - last[0])
