"""The discrete-event simulator of replicas: hand-checked small cases, the oracle, the trace
reader, and the real policy deciding on a constant load."""

from __future__ import annotations

from pathlib import Path

import pytest

from neocloud.models.autoscaling import AutoscalingConfig
from neocloud.server.autoscaling import FixedPolicy, TargetTrackingPolicy
from neocloud.simulate.autoscaling import (
    OraclePolicy,
    ReplicaModel,
    TraceRequest,
    compare,
    constant_load,
    demand_per_tick,
    load_azure_trace,
    oracle_plan,
    peak_replicas,
    simulate,
    window,
)

# one token = one second of decode, no prefill: service time = generated tokens
UNIT = ReplicaModel(prefill_s_per_token=0.0, decode_s_per_token=1.0, concurrency=1,
                    cold_start_s=5.0)


def reqs(*spec: tuple[float, int]) -> list[TraceRequest]:
    return [TraceRequest(at, 0, tokens) for at, tokens in spec]


def test_service_time_is_prompt_and_generated_tokens_times_their_cost() -> None:
    m = ReplicaModel(prefill_s_per_token=0.002, decode_s_per_token=0.05)
    r = TraceRequest(0.0, 1000, 100)
    assert m.service_s(r) == pytest.approx(2.0 + 5.0)
    assert m.first_token_s(r) == pytest.approx(2.05)


def test_one_slot_queues_first_come_first_served() -> None:
    # three 10 s requests at 0, 1, 2 on one replica with one slot: waits 0, 9, 18
    result, _ = simulate(reqs((0, 10), (1, 10), (2, 10)), FixedPolicy(1), UNIT,
                         initial_replicas=1, latency_goal_s=9.0)
    assert result.p99_wait_s == pytest.approx(18.0)
    assert result.within_goal_pct == pytest.approx(200 / 3)
    assert result.p99_latency_s == pytest.approx(28.0)
    assert result.replica_seconds == pytest.approx(30.0)  # until the last one ends
    assert result.scaling_changes == 0 and result.cold_starts == 0


def test_concurrency_serves_side_by_side() -> None:
    m = ReplicaModel(prefill_s_per_token=0.0, decode_s_per_token=1.0, concurrency=3)
    result, _ = simulate(reqs((0, 10), (1, 10), (2, 10)), FixedPolicy(1), m,
                         initial_replicas=1)
    assert result.p99_wait_s == 0.0 and result.p99_latency_s == pytest.approx(10.0)


def test_cold_start_from_zero_holds_the_request_until_ready() -> None:
    cfg = AutoscalingConfig(min_replicas=0, max_replicas=2, target=1.0)
    result, decisions = simulate(reqs((0.5, 4)), TargetTrackingPolicy(cfg), UNIT,
                                 initial_replicas=0, keep_decisions=True)
    # the tick at 1 s sees the held request and starts a replica, ready 5 s later
    assert result.cold_starts == 1 and decisions[0].reason.value == "SCALE_FROM_ZERO"
    assert result.p99_wait_s == pytest.approx(1.0 - 0.5 + 5.0)
    assert result.replica_seconds == pytest.approx(5.0 + 4.0)  # billed from its start


class TwoThenOne(FixedPolicy):
    """Two replicas until 1 s, one after."""

    def decide(self, samples, now, current, state):  # type: ignore[no-untyped-def]
        d, s = super().decide(samples, now, current, state)
        return d.model_copy(update={"desired": 2 if now < 1 else 1}), s


def test_scale_in_drains_busy_replicas_before_stopping_them() -> None:
    # two busy replicas; at 1 s the fleet shrinks to one: that one drains, then stops
    result, _ = simulate(reqs((0.2, 20), (0.4, 20), (5, 2)), TwoThenOne(2), UNIT,
                         initial_replicas=2)
    assert result.scaling_changes == 1
    # no request was cut (both ran their 20 s); the one at 5 s waited for the kept
    # replica (the second, ending at 20.4) while the first drained and stopped at 20.2
    assert result.p99_latency_s == pytest.approx(20.0)
    assert result.p99_wait_s == pytest.approx(20.4 - 5)
    assert result.replica_seconds == pytest.approx(20.2 + 22.4)


def test_demand_and_oracle_plan() -> None:
    trace = reqs((0, 10), (1, 10), (2, 3), (20, 1))
    need = demand_per_tick(trace, UNIT, 1.0)
    assert need[:6] == [1, 2, 3, 3, 3, 2]  # the 3 s request ends at 5
    assert need[12] == 0 and need[20] == 1
    assert peak_replicas(trace, UNIT, 1.0) == 3
    plan = oracle_plan(trace, UNIT, 1.0, max_replicas=64)
    # a cold start (5 s) + one tick ahead: at 14 s the request at 20 s is already planned
    assert plan[0] == 3 and plan[14] == 1 and plan[13] == 0
    assert max(oracle_plan(trace, UNIT, 1.0, max_replicas=2)) == 2


def test_oracle_meets_the_goal_and_costs_less_than_a_fixed_peak_fleet() -> None:
    m = ReplicaModel(prefill_s_per_token=0.0, decode_s_per_token=0.5, concurrency=2,
                     cold_start_s=10.0)
    trace = [TraceRequest(t * 0.5 + (30.0 if t > 60 else 0.0), 0, 8 + (t % 5))
             for t in range(120)]
    plan = oracle_plan(trace, m, 1.0, 64)
    oracle, _ = simulate(trace, OraclePolicy(plan, 1.0), m, initial_replicas=plan[0])
    fixed, _ = simulate(trace, FixedPolicy(peak_replicas(trace, m, 1.0)), m,
                        initial_replicas=peak_replicas(trace, m, 1.0))
    assert oracle.within_goal_pct == 100.0 and oracle.p99_wait_s == 0.0
    assert oracle.replica_seconds < fixed.replica_seconds


def test_warmup_is_left_out_of_the_figures() -> None:
    trace = reqs((0, 10), (1, 10), (30, 2))
    full, _ = simulate(trace, FixedPolicy(1), UNIT, initial_replicas=1)
    later, _ = simulate(trace, FixedPolicy(1), UNIT, initial_replicas=1, warmup_s=25.0)
    assert full.requests == 3 and later.requests == 1
    assert later.p99_wait_s == 0.0 and full.p99_wait_s == pytest.approx(9.0)
    assert later.replica_seconds == pytest.approx(full.replica_seconds - 25.0)
    with pytest.raises(ValueError, match="after the warm-up"):
        simulate(trace, FixedPolicy(1), UNIT, warmup_s=100.0)


def test_our_policy_on_constant_load_changes_at_most_twice_after_the_first_minute() -> None:
    m = ReplicaModel(prefill_s_per_token=0.001, decode_s_per_token=0.05, concurrency=8,
                     cold_start_s=20.0)
    sizes = [TraceRequest(0.0, 500 + 37 * i % 900, 40 + 13 * i % 300) for i in range(200)]
    steady = constant_load(3.0, 900.0, sizes, seed=7)
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=32, target=6.5,
                            scale_down_delay_s=300, scale_to_zero_delay_s=600)
    ours, oracle = compare(steady, m, cfg, ("target", "oracle"), warmup_s=60.0)
    assert ours.changes_after_first_minute <= 2
    assert ours.within_goal_pct >= 99.0
    assert ours.replica_seconds <= 1.5 * oracle.replica_seconds


def test_compare_rejects_unknown_policies() -> None:
    with pytest.raises(ValueError, match="unknown policy 'knative'"):
        compare(reqs((0, 1)), UNIT, AutoscalingConfig(), ("knative",))


def test_constant_load_rate_and_sizes() -> None:
    sizes = reqs((0, 3), (0, 7))
    steady = constant_load(10.0, 100.0, sizes, seed=1)
    assert 900 < len(steady) < 1100
    assert {r.output_tokens for r in steady} == {3, 7}
    assert all(0 <= r.at < 100 for r in steady)
    with pytest.raises(ValueError):
        constant_load(0.0, 10.0, sizes)


def test_load_azure_trace(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:50.9951690,396,109\n"
                 "2023-11-16 18:15:46.6805900,374,44\n")
    trace = load_azure_trace(f)
    assert [r.prompt_tokens for r in trace] == [374, 396]
    assert trace[0].at == 0.0 and trace[1].at == pytest.approx(4.314579, abs=1e-5)
    assert [r.at for r in window(trace, 1.0, 10.0)] == [pytest.approx(3.314579, abs=1e-5)]
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,x,1\n")
    with pytest.raises(ValueError, match="line 2"):
        load_azure_trace(f)
    f.write_text("when,tokens\n1,2\n")
    with pytest.raises(ValueError, match="expected columns"):
        load_azure_trace(f)


@pytest.mark.parametrize(("signal", "target"), [
    ("in_flight", 6.0), ("requests_per_s", 0.5), ("queue_depth", 2.0),
    ("tokens_in_flight", 3000.0), ("kv_cache_use", 0.5), ("waiting_requests", 2.0),
])
def test_every_signal_follows_a_step_in_the_simulator(signal: str, target: float) -> None:
    m = ReplicaModel(prefill_s_per_token=0.001, decode_s_per_token=0.02, concurrency=8,
                     cold_start_s=10.0, kv_tokens=8000)
    sizes = [TraceRequest(0.0, 400, 200)]
    low = constant_load(0.5, 300.0, sizes, seed=1)
    high = [TraceRequest(r.at + 300.0, r.prompt_tokens, r.output_tokens)
            for r in constant_load(4.0, 300.0, sizes, seed=2)]
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=16, signal=signal, target=target,
                            scale_down_delay_s=60, scale_to_zero_delay_s=600)
    result, decisions = simulate(low + high, TargetTrackingPolicy(cfg), m,
                                 initial_replicas=1, keep_decisions=True)
    ups = [d for d in decisions if d.desired > d.current]
    assert ups and all(d.signal.value == signal for d in decisions)
    assert result.max_replicas >= 2
