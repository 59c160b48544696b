"""neocloud's autoscaling policy: target tracking with a dead band, delays and a burst mode.

Each tick, with ``n`` the replica count the deployment runs now:

1. Average the signal (a deployment total) over the stable window (``window_s``) and the
   panic window (``panic_window_s``), both ending at ``now``. Divided by ``target`` they
   give ``raw``, the replicas the load asks for, and ``raw_burst``.
2. Recommend a count with a dead band of ``tolerance`` around the current one: move to
   ``ceil(raw)`` when ``raw > n (1 + tolerance)`` (up) or when ``n - 1`` replicas would
   carry the load at ``1 - tolerance`` of target, ``raw <= (n - 1)(1 - tolerance)``
   (down); else stay at ``n``. After a move to ``m = ceil(raw)``, ``raw`` lies in
   ``(m - 1, m]``, inside the band of ``m``, so a steady load never moves the count back
   (the invariant the "no oscillation" tests check).
3. Burst mode (Knative's panic mode): when ``raw_burst >= panic_threshold * max(ready, 1)``
   the count goes at once to ``max(n, ceil(raw_burst), recommendation)`` and nothing is
   removed until ``window_s`` has passed without such a burst. While replicas asked for
   are still starting, the burst raises the count again only if it asks for
   ``panic_threshold`` times the count already asked for: the requests queued meanwhile
   inflate the signal, and chasing them over a cold start overshoots (on the opening ramp
   of the Azure trace, 29 replicas where the oracle never needs more than 18).
4. Otherwise delays (the stabilisation of Kubernetes' HPA and Knative's scale-down delay):
   the count rises to the *lowest* recommendation of the last ``scale_up_delay_s`` and falls
   to the *highest* of the last ``scale_down_delay_s``, so one sample never moves it and a
   short dip is ridden out. After a scale-down the next one waits another
   ``scale_down_delay_s`` (a cool-down), so a slow decline is followed in a few larger
   steps rather than one replica at a time. A policy state younger than a delay (a
   restart) does not scale down until it has seen that much, and a stable window less
   than half full (the first ticks) does not scale up outside burst mode: a few samples
   are too noisy to act on.
5. Zero: to none once ``scale_to_zero_delay_s`` have passed since the last request (the
   latest sample that showed one arriving, in flight or held) and the stable window holds
   no load (so never sooner than ``window_s`` after it); the idle time counts from that
   request, not from the latest scale-down, and the scale-down cool-down does not delay
   it. A policy state that has not seen the last request (a restart) counts from its own
   start. From none to some at once when any request arrives or is held (the gateway
   holds requests while a replica starts).

The state between ticks is a short run-length history of recommendations and the time of
the last burst; see ``README.md`` beside this module for the sources of each idea.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from neocloud.models.autoscaling import AutoscalingConfig, ScalingDecision, ScalingReason
from neocloud.server.autoscaling.base import clamp
from neocloud.server.autoscaling.signals import Sample, in_window, window_mean


@dataclass(frozen=True, slots=True)
class TargetState:
    """What the policy remembers about one deployment between ticks.

    Attributes:
        since: time of the first decision in this history (None: none yet).
        history: ``(at, recommended)`` pairs, oldest first; each holds until the next.
        last_burst: time the burst condition last held (None: not in burst mode).
        burst_max: the highest count asked for during the current burst.
        last_down: time of the latest scale-down (None: none yet).
        last_request: time of the latest sample that showed a request arriving, in flight
            or held (None: none seen yet).
    """

    since: float | None = None
    history: tuple[tuple[float, int], ...] = ()
    last_burst: float | None = None
    burst_max: int = 0
    last_down: float | None = None
    last_request: float | None = None


def _ceil(x: float) -> int:
    # ceil with a small allowance for float noise (2.0000000001 asks for 2, not 3)
    return math.ceil(x - 1e-9)


class TargetTrackingPolicy:
    """The default policy of a deployment with autoscaling; see the module docstring."""

    name = "target"

    def __init__(self, config: AutoscalingConfig) -> None:
        self.config = config

    @property
    def history_s(self) -> float:
        return self.config.window_s

    def initial_state(self) -> TargetState:
        return TargetState()

    # ---------------------------------------------------------------- pieces
    def recommend(self, raw: float, n: int) -> int:
        """Replicas for ``raw`` replicas' worth of load when ``n`` run now (step 2)."""
        cfg = self.config
        tol = cfg.tolerance
        if n <= 0:
            r = _ceil(raw)
        elif raw > n * (1 + tol):
            r = _ceil(raw)
        elif _ceil(raw / (1 - tol)) < n:
            r = _ceil(raw)
        else:
            r = n
        return clamp(r, cfg.min_replicas, cfg.max_replicas)

    @staticmethod
    def _span(state: TargetState, now: float, delay_s: float) -> list[int]:
        """Recommendations in force at any time in ``[now - delay_s, now]``."""
        out: list[int] = []
        start = now - delay_s
        for at, rec in reversed(state.history):
            out.append(rec)
            if at <= start:
                break
        return out

    @staticmethod
    def _covers(state: TargetState, now: float, delay_s: float) -> bool:
        return state.since is not None and now - state.since >= delay_s

    def _remember(self, state: TargetState, now: float, rec: int) -> TargetState:
        cfg = self.config
        keep = max(cfg.scale_up_delay_s, cfg.scale_down_delay_s)
        hist = list(state.history)
        if not hist or hist[-1][1] != rec:
            hist.append((now, rec))
        # drop entries that ended before the longest delay window starts
        start = now - keep
        while len(hist) > 1 and hist[1][0] <= start:
            hist.pop(0)
        return replace(state, since=now if state.since is None else state.since,
                       history=tuple(hist))

    @staticmethod
    def _seen_request(samples: Sequence[Sample], now: float,
                      state: TargetState) -> TargetState:
        """``state`` with ``last_request`` moved to the latest busy sample up to ``now``."""
        last = state.last_request
        for s in reversed(samples):
            if s.at <= now and s.busy:
                if last is None or s.at > last:
                    last = s.at
                break
        return state if last == state.last_request else replace(state, last_request=last)

    def idle_s(self, state: TargetState, now: float) -> float:
        """Seconds without a request as far as ``state`` knows (0.0 before its first tick).

        Counted from the last request seen, or from the state's start when that is later
        (a restarted control plane does not know what came before it).
        """
        if state.since is None:
            return 0.0
        start = state.since if state.last_request is None else max(state.since,
                                                                   state.last_request)
        return now - start

    # ---------------------------------------------------------------- decide
    def decide(
        self, samples: Sequence[Sample], now: float, current: int, state: TargetState
    ) -> tuple[ScalingDecision, TargetState]:
        cfg = self.config
        latest = samples[-1] if samples else None
        ready = latest.ready_replicas if latest else 0
        in_flight = latest.in_flight if latest else 0
        stable, n_samples = window_mean(samples, cfg.signal, now, cfg.window_s)
        burst_value, _ = window_mean(samples, cfg.signal, now, cfg.panic_window_s)

        def out(desired: int, reason: ScalingReason, rec: int | None = None,
                panic: bool = False) -> ScalingDecision:
            return ScalingDecision(
                at=now, current=current, ready=ready, desired=desired, reason=reason,
                signal=cfg.signal, target=cfg.target, stable_value=stable,
                panic_value=burst_value, recommended=rec, in_flight=in_flight,
                samples=n_samples, panic=panic)

        state = self._seen_request(samples, now, state)
        bounded = clamp(current, cfg.min_replicas, cfg.max_replicas)
        if stable is None:
            if current == 0 and latest is not None and latest.busy and cfg.max_replicas > 0:
                # a request is held but the signal (e.g. engine metrics) has no value yet
                desired = max(1, cfg.min_replicas)
                return (out(desired, ScalingReason.scale_from_zero),
                        TargetState(since=now, history=((now, desired),),
                                    last_request=state.last_request))
            reason = ScalingReason.bounds if bounded != current else ScalingReason.no_metrics
            return out(bounded, reason), state
        raw = stable / cfg.target
        raw_burst = (burst_value if burst_value is not None else stable) / cfg.target

        if current == 0:
            if (latest is not None and latest.busy) or stable > 0:
                desired = clamp(max(1, _ceil(raw), _ceil(raw_burst)), max(1, cfg.min_replicas),
                                cfg.max_replicas)
                return (out(desired, ScalingReason.scale_from_zero, desired),
                        TargetState(since=now, history=((now, desired),),
                                    last_request=state.last_request))
            reason = ScalingReason.bounds if bounded != 0 else ScalingReason.steady
            return out(bounded, reason, bounded), self._remember(state, now, bounded)

        rec = self.recommend(raw, current)
        idle = rec == 0 and (latest is None or not latest.busy)
        if idle and self.idle_s(state, now) >= cfg.scale_to_zero_delay_s:
            # rec 0 means min_replicas 0 and a stable window without load; the idle time
            # runs from the last request, whatever scale-down came in between
            state = replace(self._remember(state, now, 0), last_down=now)
            return out(0, ScalingReason.scale_to_zero, rec), state

        # burst mode
        over = raw_burst >= cfg.panic_threshold * max(ready, 1)
        if over:
            state = replace(state, last_burst=now)
        elif state.last_burst is not None and now - state.last_burst >= cfg.window_s:
            state = replace(state, last_burst=None, burst_max=0)
        if state.last_burst is not None:
            grow = _ceil(raw_burst) if over else 0
            if ready < current and grow < cfg.panic_threshold * current:
                # replicas asked for are still starting and the queue they will serve is
                # what inflates the burst value: wait for them unless the load outgrows
                # even the count already asked for
                grow = 0
            want = clamp(max(current, grow, rec, state.burst_max),
                         cfg.min_replicas, cfg.max_replicas)
            # the burst's count is what the scale-down delay must then ride out
            state = self._remember(replace(state, burst_max=want), now, want)
            reason = ScalingReason.burst if want > current else ScalingReason.burst_hold
            return out(want, reason, rec, panic=True), state
        state = self._remember(state, now, rec)

        if bounded != current:
            return out(bounded, ScalingReason.bounds, rec), state
        if rec > current:
            low = min(self._span(state, now, cfg.scale_up_delay_s))
            seen = in_window(samples, now, cfg.window_s)
            full = bool(seen) and now - seen[0].at >= cfg.window_s / 2
            if low > current and full and self._covers(state, now, cfg.scale_up_delay_s):
                return out(low, ScalingReason.scale_up, rec), state
            return out(current, ScalingReason.waiting_up, rec), state
        if rec < current:
            if rec == 0 and current == 1:
                # only the zero delay (or a request in flight) keeps this replica
                return out(current, ScalingReason.waiting_zero, rec), state
            cooling = (state.last_down is not None
                       and now - state.last_down < cfg.scale_down_delay_s)
            if cooling or not self._covers(state, now, cfg.scale_down_delay_s):
                return out(current, ScalingReason.waiting_down, rec), state
            high = max(self._span(state, now, cfg.scale_down_delay_s))
            if high >= current:
                return out(current, ScalingReason.waiting_down, rec), state
            # here current >= 2 (one replica with rec 0 waits above); high 0 means idle
            # but not yet for the zero delay, so one replica stays
            return (out(max(high, 1), ScalingReason.scale_down, rec),
                    replace(state, last_down=now))
        return out(current, ScalingReason.steady, rec), state
