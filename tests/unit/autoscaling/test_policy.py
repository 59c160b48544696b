"""The target-tracking policy on synthetic load series (one sample per second).

Each case drives the policy in a closed loop: the count it decides is the count it is
given next tick, and replicas are ready at once (the simulator covers cold starts).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from pydantic import ValidationError

from neocloud.models.autoscaling import AutoscalingConfig, AutoscalingSignal, ScalingReason
from neocloud.server.autoscaling import (
    RayServeDefaultPolicy,
    RayServeSettings,
    Sample,
    ScalingDecision,
    TargetTrackingPolicy,
)

Load = Callable[[int], float]


@dataclass
class Run:
    counts: list[int]  # count in force after each tick
    decisions: list[ScalingDecision]

    def changes(self, after: int = 0) -> list[ScalingDecision]:
        return [d for d in self.decisions if d.changed and d.at >= after]

    def reversals(self, after: int = 0) -> int:
        """How often the direction of change flips (up then down or down then up)."""
        dirs = [1 if d.desired > d.current else -1 for d in self.changes(after)]
        return sum(1 for a, b in zip(dirs, dirs[1:], strict=False) if a != b)


def drive(policy: object, load: Load, seconds: int, start: int,
          signal: AutoscalingSignal = AutoscalingSignal.in_flight) -> Run:
    samples: list[Sample] = []
    state = policy.initial_state()  # type: ignore[attr-defined]
    current = start
    counts: list[int] = []
    decisions: list[ScalingDecision] = []
    for t in range(seconds):
        v = load(t)
        samples.append(Sample(at=float(t), ready_replicas=current, in_flight=round(v),
                              requests_per_s=v, held=round(v) if current == 0 else 0))
        samples = [s for s in samples if s.at > t - 70]  # the stable window
        d, state = policy.decide(samples, float(t), current, state)  # type: ignore[attr-defined]
        decisions.append(d)
        current = d.desired
        counts.append(current)
    return Run(counts, decisions)


def cfg(**kw: object) -> AutoscalingConfig:
    base: dict[str, object] = dict(min_replicas=0, max_replicas=20, target=2.0,
                                   window_s=60, panic_window_s=6, scale_up_delay_s=0,
                                   scale_down_delay_s=120, scale_to_zero_delay_s=600)
    base.update(kw)
    return AutoscalingConfig(**base)  # type: ignore[arg-type]


def noisy(level: float, amp: float, seed: int) -> Load:
    rng = random.Random(seed)
    values = [max(0.0, level + rng.uniform(-amp, amp)) for _ in range(4000)]
    return lambda t: values[t]


# ------------------------------------------------------------------ steady / no oscillation
STEADY = [
    # (name, load, start, expected count)
    ("exact fit", lambda t: 6.0, 3, 3),
    ("inside band above", lambda t: 6.5, 3, 3),        # 3.25 replicas' worth, band to 3.3
    ("inside band below", lambda t: 3.7, 3, 3),        # 1.85 replicas' worth, down below 1.8
    ("settles from too many", lambda t: 6.0, 8, 3),
    ("settles from too few", lambda t: 6.0, 1, 3),
    ("noise +-30%", noisy(12.0, 3.6, 1), 6, 6),
    ("noise around a band edge", noisy(6.6, 1.0, 2), 3, None),
    ("low rate noise", noisy(1.2, 1.2, 3), 1, None),
]


@pytest.mark.parametrize(("name", "load", "start", "expected"), STEADY,
                         ids=[c[0] for c in STEADY])
def test_steady_load_settles_and_never_oscillates(
        name: str, load: Load, start: int, expected: int | None) -> None:
    run = drive(TargetTrackingPolicy(cfg()), load, 1800, start)
    if expected is not None:
        assert run.counts[-1] == expected
    # after the settling of one stable window plus a scale-down delay, no change at all
    assert run.changes(after=60 + 120 + 30) == []
    assert run.reversals() <= 1


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("level", [0.7, 2.0, 5.0, 9.9, 21.0, 33.0])
def test_no_change_under_steady_noisy_load(seed: int, level: float) -> None:
    start = max(1, math.ceil(level / 2))  # sized for the load already
    run = drive(TargetTrackingPolicy(cfg()), noisy(level, 0.25 * level, seed), 1200, start)
    assert run.changes() == [], [d.message() for d in run.changes()]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("start", [1, 20])
def test_settles_once_then_still_under_steady_noisy_load(seed: int, start: int) -> None:
    # from 1 replica the load is a burst (sized on a few samples, may overshoot by one and
    # come back once); from 20 it is a plain scale-down
    run = drive(TargetTrackingPolicy(cfg()), noisy(8.0, 2.0, seed), 1200, start)
    assert run.reversals() <= 1 and len(run.changes()) <= 3
    assert run.changes(after=400) == []
    assert run.counts[-1] in (4, 5)


# ------------------------------------------------------------------ step, spike
def test_step_up_follows_within_the_window_and_only_up() -> None:
    run = drive(TargetTrackingPolicy(cfg()), lambda t: 4.0 if t < 300 else 16.0, 900, 2)
    assert run.counts[299] == 2
    assert run.counts[-1] == 8
    assert all(d.desired > d.current for d in run.changes())
    # a step to 4x the count is a burst: scaled at once on the short window
    first = run.changes()[0]
    assert first.reason is ScalingReason.burst and first.at <= 300 + 6


def test_small_step_waits_for_the_stable_window_not_a_burst() -> None:
    run = drive(TargetTrackingPolicy(cfg()), lambda t: 6.0 if t < 300 else 9.0, 900, 3)
    ups = run.changes()
    assert run.counts[-1] == 5 and all(d.desired > d.current for d in ups)
    assert all(d.reason is ScalingReason.scale_up for d in ups)
    assert 300 < ups[0].at and ups[-1].at <= 360


def test_scale_up_delay_is_honoured() -> None:
    run = drive(TargetTrackingPolicy(cfg(scale_up_delay_s=30)),
                lambda t: 6.0 if t < 300 else 9.0, 900, 3)
    up = run.changes()[0]
    plain = drive(TargetTrackingPolicy(cfg()), lambda t: 6.0 if t < 300 else 9.0, 900, 3)
    assert up.at >= plain.changes()[0].at + 30
    assert run.counts[-1] == 5


def test_spike_scales_at_once_holds_then_returns_in_steps() -> None:
    def load(t: int) -> float:
        return 40.0 if 200 <= t < 205 else 1.0

    run = drive(TargetTrackingPolicy(cfg()), load, 900, 1)
    changes = run.changes()
    burst = changes[0]
    assert burst.reason is ScalingReason.burst and 200 <= burst.at <= 204
    assert burst.desired > 1 and max(run.counts) >= 10  # grows while the burst lasts
    # no scale-down during the burst's stable window nor before the down delay
    downs = [d for d in changes if d.desired < d.current]
    assert downs and downs[0].at >= 204 + 120
    assert run.counts[-1] == 1
    assert run.reversals() == 1


def test_bounded_by_max_and_min() -> None:
    run = drive(TargetTrackingPolicy(cfg(min_replicas=2, max_replicas=5)),
                lambda t: 100.0 if t < 300 else 0.0, 1500, 2)
    assert max(run.counts) == 5 and min(run.counts) == 2 and run.counts[-1] == 2


# ------------------------------------------------------------------ to zero and back
def test_decay_to_zero_waits_the_zero_delay_and_wakes_at_once() -> None:
    def load(t: int) -> float:
        if t < 300:
            return 6.0
        if t < 600:
            return 6.0 * (600 - t) / 300  # decays linearly to zero at 600
        return 3.0 if t >= 2000 else 0.0

    run = drive(TargetTrackingPolicy(cfg()), load, 2100, 3)
    to_zero = [d for d in run.changes() if d.desired == 0]
    assert len(to_zero) == 1 and to_zero[0].reason is ScalingReason.scale_to_zero
    # 600 s after the last arrival (the scale-downs before it do not restart the count)
    last_request = max(t for t in range(2000) if load(t) > 0)
    assert to_zero[0].at == last_request + 600
    wake = [d for d in run.changes() if d.current == 0]
    assert wake and wake[0].reason is ScalingReason.scale_from_zero and wake[0].at == 2000
    downs = [d.desired for d in run.changes() if d.desired < d.current]
    assert downs == sorted(downs, reverse=True)  # only down until the wake


@pytest.mark.parametrize("idle", [120, 300, 600])
def test_idle_to_zero_counts_from_the_last_request_not_the_last_scale_down(idle: int) -> None:
    # two replicas busy until t0, then not one request: a scale-down 2 -> 1 comes first
    # (the scale-down delay), yet the idle time is counted from the last request
    t0 = 300
    run = drive(TargetTrackingPolicy(cfg(max_replicas=2, scale_to_zero_delay_s=idle)),
                lambda t: 4.0 if t <= t0 else 0.0, t0 + idle + 400, 2)
    to_zero = [d for d in run.changes() if d.desired == 0]
    assert [d.reason for d in to_zero] == [ScalingReason.scale_to_zero]
    assert to_zero[0].at == t0 + idle
    downs = [d for d in run.changes() if d.current == 2 and d.desired == 1]
    if idle > 120:
        assert len(downs) == 1 and t0 + 120 <= downs[0].at < t0 + idle
    assert run.counts[-1] == 0 and run.reversals() == 0


def test_idle_to_zero_shorter_than_the_window_waits_for_an_empty_window() -> None:
    # with a zero delay shorter than the stable window the count only goes to zero once
    # the window holds no load, and does not bounce back up on the old load in it
    t0 = 300
    run = drive(TargetTrackingPolicy(cfg(max_replicas=2, scale_down_delay_s=0,
                                         scale_to_zero_delay_s=10)),
                lambda t: 4.0 if t <= t0 else 0.0, t0 + 400, 2)
    to_zero = [d for d in run.changes() if d.desired == 0]
    assert len(to_zero) == 1 and to_zero[0].at == t0 + 60
    assert run.counts[-1] == 0 and run.reversals() == 0


def test_never_to_zero_while_a_request_is_in_flight() -> None:
    policy = TargetTrackingPolicy(cfg(window_s=10, panic_window_s=2, scale_down_delay_s=0,
                                      scale_to_zero_delay_s=0, signal="requests_per_s"))
    samples = [Sample(at=float(t), ready_replicas=1, in_flight=1, requests_per_s=0.0)
               for t in range(30)]
    state = policy.initial_state()
    for t in range(30):
        d, state = policy.decide(samples[: t + 1], float(t), 1, state)
        assert d.desired == 1
    assert d.reason is ScalingReason.waiting_zero


def test_min_replicas_one_never_goes_to_zero() -> None:
    run = drive(TargetTrackingPolicy(cfg(min_replicas=1)), lambda t: 0.0, 2000, 1)
    assert set(run.counts) == {1}


def test_restart_does_not_scale_down_before_a_delay() -> None:
    policy = TargetTrackingPolicy(cfg())
    samples = [Sample(at=float(t), ready_replicas=6, in_flight=2) for t in range(200)]
    state = policy.initial_state()  # a fresh state: the control plane restarted
    decided = []
    for t in range(100, 200):
        d, state = policy.decide(samples[: t + 1], float(t), 6, state)
        decided.append(d.desired)
    assert set(decided) == {6}


def test_no_samples_keeps_the_count() -> None:
    policy = TargetTrackingPolicy(cfg())
    d, _ = policy.decide([], 10.0, 3, policy.initial_state())
    assert d.desired == 3 and d.reason is ScalingReason.no_metrics


def test_engine_signal_at_zero_wakes_on_a_held_request() -> None:
    policy = TargetTrackingPolicy(cfg(signal="kv_cache_use", target=0.8))
    held = Sample(at=5.0, ready_replicas=0, in_flight=1, held=1)  # no engine metrics yet
    d, _ = policy.decide([held], 5.0, 0, policy.initial_state())
    assert d.desired == 1 and d.reason is ScalingReason.scale_from_zero


def test_decision_carries_the_values_behind_it() -> None:
    policy = TargetTrackingPolicy(cfg())
    samples = [Sample(at=float(t), ready_replicas=1, in_flight=5) for t in range(10)]
    d, _ = policy.decide(samples, 9.0, 1, policy.initial_state())
    assert d.changed and d.stable_value == 5.0 and d.panic_value == 5.0
    assert d.samples == 10 and d.target == 2.0 and d.signal is AutoscalingSignal.in_flight
    assert "1 -> 3" in d.message() and "BURST_SCALE_UP" in d.message()


@pytest.mark.parametrize(("kw", "field", "loc"), [
    (dict(min_replicas=3, max_replicas=2), "max_replicas", "max_replicas"),
    (dict(window_s=10, panic_window_s=20), "panic_window_s", "panic_window_s"),
    (dict(scale_down_delay_s=300, scale_to_zero_delay_s=60), "scale_to_zero_delay_s",
     "scale_to_zero_delay_s"),
    (dict(scale_to_zero_delay_s=10), "scale_down_delay_s \\(120.0\\)",
     "scale_to_zero_delay_s"),
    (dict(signal="kv_cache_use", target=2.0), "kv_cache_use", "target"),
    (dict(target=0), "target", "target"),
    (dict(min_replicas=-1), "min_replicas", "min_replicas"),
    # a rule's field left to its default is compared too (a PATCH with only
    # scale_down_delay_s 71080 was accepted and failed later with a 500)
    (dict(scale_down_delay_s=71080), "scale_to_zero_delay_s \\(600.0\\)",
     "scale_to_zero_delay_s"),
    (dict(min_replicas=6), "max_replicas \\(4\\)", "max_replicas"),
    (dict(window_s=3), "panic_window_s \\(6.0\\)", "panic_window_s"),
])
def test_config_rejects_inconsistent_settings(kw: dict[str, object], field: str,
                                              loc: str) -> None:
    # the error is located at the field that breaks the rule (the API names it)
    with pytest.raises(ValidationError, match=field) as caught:
        AutoscalingConfig(**kw)  # type: ignore[arg-type]
    assert [e["loc"] for e in caught.value.errors()] == [(loc,)]


# ------------------------------------------------------------------ Ray Serve defaults
def test_ray_default_waits_30_s_up_and_600_s_down() -> None:
    policy = RayServeDefaultPolicy(RayServeSettings(min_replicas=1, max_replicas=20), 1.0)
    run = drive(policy, lambda t: 8.0 if 100 <= t < 400 else 2.0, 1500, 1)
    ups = [d for d in run.changes() if d.desired > d.current]
    downs = [d for d in run.changes() if d.desired < d.current]
    assert ups[0].at >= 100 + 30 and run.counts[399] == 4
    assert downs and downs[0].at >= 400 + 600


def test_ray_default_wakes_from_zero_at_once() -> None:
    policy = RayServeDefaultPolicy(RayServeSettings(min_replicas=0, max_replicas=4), 1.0)
    d, _ = policy.decide([Sample(at=1.0, ready_replicas=0, in_flight=1, held=1)], 1.0, 0,
                         policy.initial_state())
    assert d.desired == 1 and d.reason is ScalingReason.scale_from_zero


def test_sample_window_keeps_the_recent_samples_in_order() -> None:
    from neocloud.server.autoscaling import SampleWindow

    w = SampleWindow(keep_s=10)
    for t in range(25):
        w.add(Sample(at=float(t), ready_replicas=1))
    assert [s.at for s in w.samples()] == [float(t) for t in range(15, 25)]
    with pytest.raises(ValueError, match="older"):
        w.add(Sample(at=3.0, ready_replicas=1))
    with pytest.raises(ValueError):
        SampleWindow(0)


def test_arrival_rate_from_a_rising_counter() -> None:
    from neocloud.server.autoscaling import ArrivalRate

    rate = ArrivalRate()
    assert rate.update(10.0, 100) == 0.0  # first sight
    assert rate.update(12.0, 110) == 5.0
    assert rate.update(13.0, 110) == 0.0
    assert rate.update(14.0, 3) == 0.0  # the gateway restarted: counting starts again
    assert rate.update(16.0, 7) == 2.0


def test_scaling_events_use_the_camel_case_of_every_other_event_reason() -> None:
    from neocloud.models.autoscaling import ScalingReason
    from neocloud.server.autoscaling import event_reason

    assert event_reason(ScalingReason.burst) == "BurstScaleUp"
    assert event_reason(ScalingReason.scale_to_zero) == "ScaleToZero"
    for reason in ScalingReason:
        name = event_reason(reason)
        assert name[0].isupper() and "_" not in name and not name.isupper(), name
