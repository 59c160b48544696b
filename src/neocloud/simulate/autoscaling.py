"""Discrete-event simulation of a deployment's replicas under an autoscaling policy.

Inputs: a request trace (arrival time, prompt tokens, generated tokens; the Azure LLM
inference trace 2023 by default), a replica model and a policy from
``neocloud.server.autoscaling``. The real policy code decides at every tick, from the same
kind of samples the control plane gives it.

Replica model (:class:`ReplicaModel`):
- a request takes ``prompt_tokens * prefill_s_per_token + generated_tokens *
  decode_s_per_token`` seconds of service once it has a slot;
- a replica serves up to ``concurrency`` requests at once, each at that speed (continuous
  batching below its batch limit); its first token comes after the prefill plus one decode
  step;
- a new replica is billed from the moment it is started and serves after ``cold_start_s``;
- requests wait in one first-come-first-served queue at the gateway when every ready
  replica is full (or none is ready), and go to the ready replica with the fewest requests
  (the gateway's least-outstanding balancing);
- scale-in cancels replicas still starting first, then takes the least-loaded ready
  replicas, which get no new request and stop (end of billing) when their last one ends.

A request meets the latency goal when it starts being served within ``latency_goal_s`` of
its arrival (the delay the fleet adds: queueing behind full replicas or a cold start; its
own prefill and decode are what it costs on any fleet).

The oracle (:func:`oracle_plan`) knows every arrival in advance: at each tick it runs the
fewest replicas that let every request of the next ``cold_start_s + tick_s`` start at once
(``ceil(max in-service / concurrency)``), starting replicas a cold start ahead. Asking for
no wait at all makes it a little stricter than the goal, i.e. it may use slightly more
than the true minimum for ``latency_goal_s > 0``.
"""

from __future__ import annotations

import csv
import heapq
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neocloud.models.autoscaling import (
    AutoscalingConfig,
    AutoscalingSignal,
    ScalingDecision,
    ScalingReason,
)
from neocloud.server.autoscaling import Policy, Sample

# --------------------------------------------------------------------------- trace


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request: arrival ``at`` (seconds from the trace start) and its token counts."""

    at: float
    prompt_tokens: int
    output_tokens: int


def _parse_timestamp(text: str) -> float:
    # "2023-11-16 18:15:46.6805900": seven fractional digits, which datetime does not parse
    whole, _, frac = text.strip().partition(".")
    base = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


def load_azure_trace(path: Path) -> list[TraceRequest]:
    """Read an Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    Returns the requests sorted by arrival, times in seconds from the first one.

    Raises:
        ValueError: a missing column or a malformed row (its line number in the message).
    """
    rows: list[tuple[float, int, int]] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns {', '.join(sorted(need))}")
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((_parse_timestamp(row["TIMESTAMP"]), int(row["ContextTokens"]),
                             int(row["GeneratedTokens"])))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from None
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort()
    t0 = rows[0][0]
    return [TraceRequest(t - t0, max(0, p), max(0, g)) for t, p, g in rows]


def window(requests: Sequence[TraceRequest], start_s: float, end_s: float) -> list[TraceRequest]:
    """The requests arriving in ``[start_s, end_s)``, re-timed to start at zero."""
    return [TraceRequest(r.at - start_s, r.prompt_tokens, r.output_tokens)
            for r in requests if start_s <= r.at < end_s]


def constant_load(
    rate_per_s: float, duration_s: float, sizes: Sequence[TraceRequest], seed: int = 0
) -> list[TraceRequest]:
    """Poisson arrivals at a constant ``rate_per_s`` for ``duration_s``; token counts drawn
    at random from ``sizes`` (so the load is constant but requests are as varied as in the
    trace)."""
    if rate_per_s <= 0 or duration_s <= 0 or not sizes:
        raise ValueError("constant load needs a positive rate, a duration and request sizes")
    rng = random.Random(seed)
    out: list[TraceRequest] = []
    t = rng.expovariate(rate_per_s)
    while t < duration_s:
        s = rng.choice(sizes)
        out.append(TraceRequest(t, s.prompt_tokens, s.output_tokens))
        t += rng.expovariate(rate_per_s)
    return out


# --------------------------------------------------------------------------- model

#: Seconds per generated token measured by ``benchmarks/serving`` (README, one quiet run on
#: 2 CPU threads): the built-in engine in-process streamed SmolLM2-135M-Instruct at 16.03
#: tokens/s, one request at a time.
MEASURED_DECODE_S_PER_TOKEN = 0.0624
#: Seconds per prompt token from the same run: the first token came 158 ms after the
#: request for a 42-token chat prompt (158 / 42 = 3.76 ms; an upper bound, as it includes
#: the fixed cost of a step).
MEASURED_PREFILL_S_PER_TOKEN = 0.00376


@dataclass(frozen=True)
class ReplicaModel:
    """What one replica can do. Times in seconds.

    Attributes:
        prefill_s_per_token: seconds of service per prompt token.
        decode_s_per_token: seconds per generated token (time between tokens).
        concurrency: requests one replica serves at once.
        cold_start_s: from start (billing begins) to ready.
        kv_tokens: tokens of KV cache per replica (for the ``kv_cache_use`` signal).
    """

    prefill_s_per_token: float
    decode_s_per_token: float
    concurrency: int = 8
    cold_start_s: float = 30.0
    kv_tokens: int = 16384

    def __post_init__(self) -> None:
        if self.prefill_s_per_token < 0 or self.decode_s_per_token <= 0:
            raise ValueError("per-token costs must be positive (prefill may be 0)")
        if self.concurrency < 1 or self.cold_start_s < 0 or self.kv_tokens < 1:
            raise ValueError("concurrency and kv_tokens must be >= 1, cold_start_s >= 0")

    def service_s(self, r: TraceRequest) -> float:
        return (r.prompt_tokens * self.prefill_s_per_token
                + r.output_tokens * self.decode_s_per_token)

    def first_token_s(self, r: TraceRequest) -> float:
        return r.prompt_tokens * self.prefill_s_per_token + self.decode_s_per_token


@dataclass
class SimResult:
    """Figures of one simulated run (seconds unless named otherwise)."""

    policy: str
    requests: int
    replica_seconds: float
    within_goal_pct: float
    p50_latency_s: float
    p99_latency_s: float
    p99_wait_s: float
    p99_ttft_s: float
    scaling_changes: int
    changes_after_first_minute: int
    cold_starts: int
    max_replicas: int
    mean_replicas: float
    duration_s: float
    latency_goal_s: float
    reasons: dict[str, int] = field(default_factory=dict)
    """How many changes each reason code caused."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 4)
        return d


# --------------------------------------------------------------------------- engine


class _Replica:
    __slots__ = ("rid", "started", "ready_at", "running", "state", "stopped")

    def __init__(self, rid: int, started: float, ready_at: float) -> None:
        self.rid = rid
        self.started = started
        self.ready_at = ready_at
        self.running = 0
        self.state = "starting"  # starting | ready | draining | stopped
        self.stopped: float | None = None


_TICK, _READY, _DONE, _ARRIVAL = 0, 1, 2, 3  # order of events at the same instant


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[i]


def simulate(
    requests: Sequence[TraceRequest],
    policy: Policy[Any],
    model: ReplicaModel,
    *,
    tick_s: float = 1.0,
    latency_goal_s: float = 1.0,
    initial_replicas: int = 1,
    warmup_s: float = 0.0,
    keep_decisions: bool = False,
) -> tuple[SimResult, list[ScalingDecision]]:
    """Replay ``requests`` on replicas scaled by ``policy``; see the module docstring.

    ``initial_replicas`` are ready at time 0. The first ``warmup_s`` seconds are simulated
    but left out of the figures (requests arriving then, replica-seconds and changes
    before it), so that a trace that starts from nothing in flight does not count as a
    ramp from zero. ``changes_after_first_minute`` counts changes from ``warmup_s + 60``.

    Returns the figures and, with ``keep_decisions``, every decision that changed the
    count (the events the control plane would record).

    Raises:
        ValueError: ``tick_s`` not positive, no request after the warm-up, or a negative
            initial count.
    """
    if tick_s <= 0 or initial_replicas < 0 or warmup_s < 0:
        raise ValueError("simulate needs tick_s > 0, initial_replicas >= 0, warmup_s >= 0")
    if not any(r.at >= warmup_s for r in requests):
        raise ValueError("no request arrives after the warm-up")
    reqs = sorted(requests, key=lambda r: r.at)
    events: list[tuple[float, int, int, int]] = []  # (time, kind, seq, payload)
    seq = 0

    def push(t: float, kind: int, payload: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, kind, seq, payload))

    for i, r in enumerate(reqs):
        push(r.at, _ARRIVAL, i)
    replicas: list[_Replica] = []
    for _ in range(initial_replicas):
        rep = _Replica(len(replicas), 0.0, 0.0)
        rep.state = "ready"
        replicas.append(rep)
    push(0.0, _TICK, 0)

    queue: deque[int] = deque()
    start_at = [0.0] * len(reqs)
    done_at = [0.0] * len(reqs)
    on_replica = [0] * len(reqs)
    remaining = len(reqs)
    tokens_running = 0
    arrivals_since_tick = 0
    samples: deque[Sample] = deque()
    keep_s = policy.history_s + tick_s
    state = policy.initial_state()
    current = initial_replicas
    changes = 0
    changes_late = 0
    cold_starts = 0
    max_reps = initial_replicas
    reasons: dict[str, int] = {}
    kept: list[ScalingDecision] = []
    replica_time_integral = 0.0
    last_t = 0.0

    def active() -> list[_Replica]:
        return [p for p in replicas if p.state in ("starting", "ready")]

    def dispatch(now: float) -> None:
        nonlocal tokens_running
        while queue:
            best: _Replica | None = None
            for p in replicas:
                if p.state == "ready" and p.running < model.concurrency and (
                        best is None or p.running < best.running):
                    best = p
            if best is None:
                return
            i = queue.popleft()
            r = reqs[i]
            best.running += 1
            start_at[i] = now
            on_replica[i] = best.rid
            tokens_running += r.prompt_tokens + r.output_tokens
            push(now + model.service_s(r), _DONE, i)

    def stop(p: _Replica, now: float) -> None:
        p.state = "stopped"
        p.stopped = now

    def scale_to(n: int, now: float) -> None:
        nonlocal cold_starts
        act = active()
        if n > len(act):
            for _ in range(n - len(act)):
                rep = _Replica(len(replicas), now, now + model.cold_start_s)
                replicas.append(rep)
                cold_starts += 1
                push(rep.ready_at, _READY, rep.rid)
            return
        excess = len(act) - n
        starting = sorted((p for p in act if p.state == "starting"), key=lambda p: -p.started)
        ready = sorted((p for p in act if p.state == "ready"), key=lambda p: p.running)
        for p in (starting + ready)[:excess]:
            if p.running == 0:
                stop(p, now)
            else:
                p.state = "draining"

    while events:
        now, kind, _, payload = heapq.heappop(events)
        if kind == _TICK and remaining == 0:
            break  # the last request has ended: so has the run
        if now > warmup_s:
            live = sum(1 for p in replicas if p.state != "stopped")
            replica_time_integral += live * (now - max(last_t, warmup_s))
        last_t = now
        if kind == _ARRIVAL:
            arrivals_since_tick += 1
            queue.append(payload)
            dispatch(now)
        elif kind == _DONE:
            r = reqs[payload]
            done_at[payload] = now
            remaining -= 1
            tokens_running -= r.prompt_tokens + r.output_tokens
            p = replicas[on_replica[payload]]
            p.running -= 1
            if p.state == "draining" and p.running == 0:
                stop(p, now)
            dispatch(now)
        elif kind == _READY:
            p = replicas[payload]
            if p.state == "starting":
                p.state = "ready"
                dispatch(now)
        else:  # tick
            ready_reps = [p for p in replicas if p.state == "ready"]
            running = sum(p.running for p in replicas)
            sample = Sample(
                at=now,
                ready_replicas=len(ready_reps),
                in_flight=running + len(queue),
                held=len(queue) if not ready_reps else 0,
                requests_per_s=arrivals_since_tick / tick_s if now > 0 else 0.0,
                queue_depth=float(len(queue)),
                tokens_in_flight=float(tokens_running),
                kv_cache_use=min(float(len(ready_reps)), tokens_running / model.kv_tokens),
                waiting_requests=float(len(queue)),
            )
            arrivals_since_tick = 0
            samples.append(sample)
            while samples and samples[0].at <= now - keep_s:
                samples.popleft()
            decision, state = policy.decide(list(samples), now, current, state)
            if decision.desired != current and now >= warmup_s:
                changes += 1
                if now >= warmup_s + 60.0:
                    changes_late += 1
                reasons[decision.reason.value] = reasons.get(decision.reason.value, 0) + 1
            if decision.desired != current:
                if keep_decisions:
                    kept.append(decision)
                current = decision.desired
            scale_to(current, now)
            if now >= warmup_s:
                max_reps = max(max_reps, len(active()))
            if remaining > 0:
                push(now + tick_s, _TICK, 0)

    end = last_t
    for p in replicas:
        if p.state != "stopped":
            stop(p, end)
    replica_seconds = sum(max(0.0, (p.stopped or end) - max(p.started, warmup_s))
                          for p in replicas)
    counted = [i for i in range(len(reqs)) if reqs[i].at >= warmup_s]
    waits = sorted(start_at[i] - reqs[i].at for i in counted)
    lat = sorted(done_at[i] - reqs[i].at for i in counted)
    ttft = sorted(start_at[i] - reqs[i].at + model.first_token_s(reqs[i]) for i in counted)
    within = sum(1 for w in waits if w <= latency_goal_s + 1e-9)
    span = end - warmup_s
    result = SimResult(
        policy=policy.name,
        requests=len(counted),
        replica_seconds=replica_seconds,
        within_goal_pct=100.0 * within / len(counted),
        p50_latency_s=_percentile(lat, 0.50),
        p99_latency_s=_percentile(lat, 0.99),
        p99_wait_s=_percentile(waits, 0.99),
        p99_ttft_s=_percentile(ttft, 0.99),
        scaling_changes=changes,
        changes_after_first_minute=changes_late,
        cold_starts=cold_starts,
        max_replicas=max_reps,
        mean_replicas=replica_time_integral / span if span > 0 else float(initial_replicas),
        duration_s=span,
        latency_goal_s=latency_goal_s,
        reasons=reasons,
    )
    return result, kept


# --------------------------------------------------------------------------- oracle


def demand_per_tick(
    requests: Sequence[TraceRequest], model: ReplicaModel, tick_s: float
) -> list[int]:
    """Replicas needed in each tick ``[k tick_s, (k+1) tick_s)`` for no request to wait:
    ``ceil(max requests in service during the tick / concurrency)`` with every request
    served from its arrival."""
    if not requests:
        return [0]
    edges: list[tuple[float, int]] = []
    for r in requests:
        edges.append((r.at, 1))
        edges.append((r.at + model.service_s(r), -1))
    edges.sort(key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
    horizon = max(t for t, _ in edges)
    ticks = int(horizon // tick_s) + 2
    peak = [0] * ticks
    busy = 0
    for t, d in edges:
        k = int(t // tick_s)
        if d < 0:
            busy -= 1
            continue
        busy += 1
        peak[k] = max(peak[k], busy)
    # a tick with no arrival still holds what was running at its start
    busy = 0
    j = 0
    for k in range(ticks):
        t0 = k * tick_s
        while j < len(edges) and edges[j][0] <= t0:
            busy += edges[j][1]
            j += 1
        peak[k] = max(peak[k], busy)
    return [math.ceil(b / model.concurrency) for b in peak]


def oracle_plan(
    requests: Sequence[TraceRequest], model: ReplicaModel, tick_s: float, max_replicas: int
) -> list[int]:
    """Replicas to run at each tick: the most any tick of the next ``cold_start_s + tick_s``
    needs (so a replica is started a cold start before it must serve), at most
    ``max_replicas``."""
    need = demand_per_tick(requests, model, tick_s)
    ahead = math.ceil(model.cold_start_s / tick_s) + 1
    plan = []
    window_q: deque[tuple[int, int]] = deque()  # sliding maximum over need[k .. k+ahead]
    for k in range(len(need) + ahead):
        if k < len(need):
            while window_q and window_q[-1][1] <= need[k]:
                window_q.pop()
            window_q.append((k, need[k]))
        start = k - ahead
        if start >= 0:
            while window_q and window_q[0][0] < start:
                window_q.popleft()
            plan.append(min(max_replicas, window_q[0][1] if window_q else 0))
    return plan


class OraclePolicy:
    """Follows a plan computed from the future (:func:`oracle_plan`); a lower bound."""

    name = "oracle"

    def __init__(self, plan: Sequence[int], tick_s: float) -> None:
        self.plan = list(plan)
        self.tick_s = tick_s

    @property
    def history_s(self) -> float:
        return 0.0

    def initial_state(self) -> None:
        return None

    def decide(
        self, samples: Sequence[Sample], now: float, current: int, state: None
    ) -> tuple[ScalingDecision, None]:
        k = min(len(self.plan) - 1, int(round(now / self.tick_s)))
        latest = samples[-1] if samples else None
        return ScalingDecision(
            at=now, current=current, ready=latest.ready_replicas if latest else 0,
            desired=self.plan[k], reason=ScalingReason.planned,
            signal=AutoscalingSignal.in_flight, target=0.0,
            in_flight=latest.in_flight if latest else 0,
        ), None


def peak_replicas(requests: Iterable[TraceRequest], model: ReplicaModel, tick_s: float) -> int:
    """The fleet size a fixed fleet needs for the trace's peak (no request waits)."""
    return max(demand_per_tick(list(requests), model, tick_s))


# --------------------------------------------------------------------------- comparison

#: Policies :func:`compare` knows: ours, Ray Serve's defaults, a fleet fixed for the peak,
#: and the oracle.
POLICY_NAMES: tuple[str, ...] = ("target", "ray-serve-default", "fixed", "oracle")


def warm_start(plan: Sequence[int], tick_s: float, warmup_s: float) -> int:
    """The count of a fleet that was already following the load: the most the oracle's
    ``plan`` runs during the warm-up (its first tick without one)."""
    return max(plan[: max(1, int(warmup_s / tick_s) + 1)])


def compare(
    requests: Sequence[TraceRequest],
    model: ReplicaModel,
    config: AutoscalingConfig,
    policies: Sequence[str] = POLICY_NAMES,
    *,
    tick_s: float = 1.0,
    latency_goal_s: float = 1.0,
    warmup_s: float = 0.0,
    fixed_replicas: int | None = None,
    initial_replicas: int | None = None,
) -> list[SimResult]:
    """Simulate each named policy on the same requests and replica model.

    ``config`` sets ours (``target``) and the bounds of every policy (Ray Serve's policy
    keeps its own defaults otherwise). ``fixed`` runs ``fixed_replicas`` (default: the
    peak, :func:`peak_replicas`). Autoscaling policies start with ``initial_replicas``
    ready (default: what the oracle runs during the warm-up, i.e. a fleet that was already
    following this load; at least ``min_replicas``).

    Raises:
        ValueError: an unknown policy name, or what :func:`simulate` raises.
    """
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; known: {', '.join(POLICY_NAMES)}")
    from neocloud.server.autoscaling import (
        FixedPolicy,
        RayServeDefaultPolicy,
        RayServeSettings,
        TargetTrackingPolicy,
    )

    plan = oracle_plan(requests, model, tick_s, config.max_replicas)
    start = initial_replicas if initial_replicas is not None else warm_start(
        plan, tick_s, warmup_s)
    start = max(config.min_replicas, min(config.max_replicas, start))
    results = []
    for name in policies:
        policy: Policy[Any]
        first = start
        if name == "target":
            policy = TargetTrackingPolicy(config)
        elif name == "ray-serve-default":
            policy = RayServeDefaultPolicy(
                RayServeSettings(min_replicas=config.min_replicas,
                                 max_replicas=config.max_replicas), tick_s)
        elif name == "fixed":
            n = fixed_replicas if fixed_replicas is not None else min(
                config.max_replicas, peak_replicas(requests, model, tick_s))
            policy = FixedPolicy(n)
            first = n
        else:
            policy = OraclePolicy(plan, tick_s)
            first = plan[0]
        result, _ = simulate(requests, policy, model, tick_s=tick_s,
                             latency_goal_s=latency_goal_s, initial_replicas=first,
                             warmup_s=warmup_s)
        results.append(result)
    return results
