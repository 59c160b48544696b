"""Ray Serve's default autoscaling policy with its default settings, for comparison.

A re-statement (not a copy) of ``replica_queue_length_autoscaling_policy`` and the delay
logic around it in ray-project/ray ``python/ray/serve/autoscaling_policy.py``, with the
defaults of ``AutoscalingConfig`` in ``python/ray/serve/config.py`` and
``python/ray/serve/_private/constants.py``:

========================== ======= ==================================================
setting                    default source
========================== ======= ==================================================
target_ongoing_requests    2       ``DEFAULT_TARGET_ONGOING_REQUESTS`` (constants.py)
look_back_period_s         30 s    ``AutoscalingConfig.look_back_period_s``
upscale_delay_s            30 s    ``AutoscalingConfig.upscale_delay_s``
downscale_delay_s          600 s   ``AutoscalingConfig.downscale_delay_s``
downscale_to_zero_delay_s  unset   falls back to ``downscale_delay_s``
smoothing_factor           1.0     ``upscaling_factor``/``downscaling_factor`` unset
min_replicas               1       ``AutoscalingConfig.min_replicas``
========================== ======= ==================================================

Each tick: ``ongoing`` is the average over the look-back period of the requests in flight
(queued or running) of the whole deployment; the policy asks for
``ceil(n + factor * (ongoing / target - n))`` replicas (one fewer when that is stuck at
``n`` while scaling down), bounded by min/max. A change is applied only after the same
direction has been asked for on more than ``delay / tick_s`` consecutive ticks (Ray counts
control-loop periods of ``CONTROL_LOOP_INTERVAL_S`` = 0.1 s; here the caller's tick), and
the counter restarts after each change or when the direction flips. At zero replicas any
request scales to one at once (Ray's cold-start fast path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from neocloud.models.autoscaling import AutoscalingSignal, ScalingDecision, ScalingReason
from neocloud.server.autoscaling.base import clamp
from neocloud.server.autoscaling.signals import Sample, window_mean


@dataclass(frozen=True)
class RayServeSettings:
    """Ray Serve's ``AutoscalingConfig`` defaults (see the module docstring for sources)."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    look_back_period_s: float = 30.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    downscale_to_zero_delay_s: float | None = None
    upscaling_factor: float = 1.0
    downscaling_factor: float = 1.0


class RayServeDefaultPolicy:
    """Ray Serve's default policy; ``tick_s`` is how often the caller decides (seconds)."""

    name = "ray-serve-default"

    def __init__(self, settings: RayServeSettings, tick_s: float) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self.settings = settings
        self.tick_s = tick_s

    @property
    def history_s(self) -> float:
        return self.settings.look_back_period_s

    def initial_state(self) -> int:
        """The decision counter: positive ticks asking up, negative asking down."""
        return 0

    def decide(
        self, samples: Sequence[Sample], now: float, current: int, state: int
    ) -> tuple[ScalingDecision, int]:
        cfg = self.settings
        latest = samples[-1] if samples else None
        ready = latest.ready_replicas if latest else 0
        in_flight = latest.in_flight if latest else 0
        ongoing, n = window_mean(samples, AutoscalingSignal.in_flight, now,
                                 cfg.look_back_period_s)

        def out(desired: int, reason: ScalingReason, rec: int | None) -> ScalingDecision:
            return ScalingDecision(
                at=now, current=current, ready=ready, desired=desired, reason=reason,
                signal=AutoscalingSignal.in_flight, target=cfg.target_ongoing_requests,
                stable_value=ongoing, recommended=rec, in_flight=in_flight, samples=n)

        if current == 0:
            if latest is not None and latest.busy:
                want = clamp(max(1, math.ceil(cfg.upscaling_factor)), 1, cfg.max_replicas)
                return out(want, ScalingReason.scale_from_zero, want), state
            idle = clamp(0, cfg.min_replicas, cfg.max_replicas)
            return out(idle, ScalingReason.bounds if idle else ScalingReason.steady, idle), 0
        if ongoing is None:
            return out(current, ScalingReason.no_metrics, None), state
        wanted = ongoing / cfg.target_ongoing_requests
        delta = wanted - current
        factor = cfg.upscaling_factor if delta > 0 else cfg.downscaling_factor
        scaled = math.ceil(current + factor * delta)
        if math.ceil(wanted) < current and scaled == current:
            scaled -= 1
        rec = clamp(scaled, cfg.min_replicas, cfg.max_replicas)

        counter = state
        if rec > current:
            counter = max(counter, 0) + 1
            if counter > int(cfg.upscale_delay_s / self.tick_s):
                return out(rec, ScalingReason.scale_up, rec), 0
            return out(current, ScalingReason.waiting_up, rec), counter
        if rec < current:
            counter = min(counter, 0) - 1
            to_zero = current == 1
            delay = cfg.downscale_delay_s
            if to_zero and cfg.downscale_to_zero_delay_s is not None:
                delay = cfg.downscale_to_zero_delay_s
            target = rec if to_zero else max(1, rec)
            if counter < -int(delay / self.tick_s):
                reason = ScalingReason.scale_to_zero if target == 0 else ScalingReason.scale_down
                return out(target, reason, rec), 0
            return out(current, ScalingReason.waiting_down, rec), counter
        return out(current, ScalingReason.steady, rec), 0
