"""A slice of the Azure LLM inference trace replayed through a real local cloud, against the
simulator with the same settings (validation of ``neocloud.simulate.autoscaling``).

What runs:
- ``python -m neocloud up`` in a temporary data folder on loopback (reconcile interval
  ``--tick`` s), with a shape ``cpu.replay`` small enough for many replicas on one host.
- A stub service whose handler sleeps the service time of its request, computed from the
  trace's token counts with the simulator's per-token costs divided by the compression
  factor ``--compress`` (``prompt x 3.76 ms + generated x 62.4 ms``, ``/ C``), at most
  ``--concurrency`` requests at once per replica (others wait in the replica, as a full
  replica's requests wait in the simulator's queue).
- Our policy (``TargetTrackingPolicy``), ``min_replicas`` 0, the benchmark's chosen
  setting (target 7 in flight per replica, 30 s window, 6 s burst window, 120 s down, 600 s
  to zero) with every time divided by ``C``.
- The slice ``[--start, --start + --duration)`` s of the trace, every ``--every``-th request
  (fewer replica processes on a small host), its arrival times divided by ``C``, sent open
  loop (each at its time, whatever the answers) with httpx's async client.
- Then a fixed fleet of the slice's peak (the fewest replicas with which no request waits)
  on the same slice (``--no-fixed`` to skip).
- The simulator on the same requests, per-token costs, concurrency, policy settings and
  tick, with the cold start measured in the real run (median of replica created -> ready).

Figures, all in real (compressed) seconds: replica-seconds over the replay (from the
control plane's usage records, clipped to first arrival -> last answer), % of requests
whose wait (latency minus their service time) is within the latency goal ``--latency-goal
/ C``, p99 latency, scaling changes (the deployment's scaling events, the gateway's wake
included), cold starts (replicas started); real / simulated as ratios.

Prints the load average first, a table, then one JSON line. Usage:
``.venv/bin/python benchmarks/autoscaling/replay_local.py [--duration 900] [--compress 10]
[--every 4] [--no-fixed]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from neocloud.models.autoscaling import AutoscalingConfig, ScalingReason
from neocloud.server.autoscaling import event_reason
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Event, Replica, UsageRecord
from neocloud.simulate.autoscaling import (
    MEASURED_DECODE_S_PER_TOKEN,
    MEASURED_PREFILL_S_PER_TOKEN,
    ReplicaModel,
    SimResult,
    TraceRequest,
    compare,
    load_azure_trace,
    peak_replicas,
    window,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cold_start import Cloud  # noqa: E402 - the local cloud of the cold-start benchmark

TRACE = HERE.parents[2] / "shared" / "traces" / "azure-llm-inference-2023" / \
    "AzureLLMInferenceTrace_conv.csv"
SHAPE = {"name": "cpu.replay", "cpu_milli": 100, "memory_mib": 256, "price_per_hour_usd": 0.01}
STUB = textwrap.dedent('''
    import asyncio
    import os

    from neocloud.serving import Service, endpoint

    PREFILL_S = float(os.environ["REPLAY_PREFILL_S_PER_TOKEN"])
    DECODE_S = float(os.environ["REPLAY_DECODE_S_PER_TOKEN"])
    SLOTS = int(os.environ["REPLAY_CONCURRENCY"])


    class ReplayStub(Service):
        """Sleeps the service time of a request of the given token counts."""

        @endpoint(max_concurrency=SLOTS)
        async def serve(self, prompt_tokens: int, output_tokens: int) -> dict:
            s = prompt_tokens * PREFILL_S + output_tokens * DECODE_S
            await asyncio.sleep(s)
            return {"service_s": s}
''')
#: Event reasons that are a change of the replica count by autoscaling.
SCALING_REASONS = frozenset({event_reason(r) for r in ScalingReason} | {"ScalingFromZero"})


@dataclass
class Outcome:
    """One request as the client saw it (seconds)."""

    lag_s: float
    """Sent after its scheduled time by this much (the client's own delay)."""
    latency_s: float
    wait_s: float
    """Latency minus the request's service time: what the fleet added."""
    status: int


@dataclass
class RealResult:
    name: str
    requests: int
    failed: int
    replica_seconds: float
    within_goal_pct: float
    p50_wait_s: float
    p99_wait_s: float
    p99_latency_s: float
    scaling_changes: int
    cold_starts: int
    span_s: float
    p99_client_lag_s: float
    cold_start_s: list[float]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


async def _send_all(cloud: Cloud, name: str, reqs: list[TraceRequest], model: ReplicaModel
                    ) -> tuple[list[Outcome], float, float]:
    """Send every request at its time; returns the outcomes, the monotonic start and the
    monotonic time of the last answer."""
    headers = {"Authorization": cloud.http.headers["Authorization"]}
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=cloud.url, headers=headers, timeout=300,
                                 limits=limits) as http:
        t0 = time.perf_counter() + 0.5
        last = [t0]

        async def one(r: TraceRequest) -> Outcome:
            delay = t0 + r.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            try:
                resp = await http.post(f"/endpoints/{name}/serve", json={
                    "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens})
                status = resp.status_code
            except httpx.HTTPError:
                status = 0
            done = time.perf_counter()
            last[0] = max(last[0], done)
            lat = done - sent
            return Outcome(sent - t0 - r.at, lat, lat - model.service_s(r), status)

        outs = await asyncio.gather(*(one(r) for r in reqs))
    return list(outs), t0, last[0]


def _figures(db: Database, dep_id: str, name: str, outs: list[Outcome], w0: datetime,
             w1: datetime, goal_s: float, cold: list[float]) -> RealResult:
    """The real run's figures from the client's outcomes and the control plane's rows."""
    with db.session() as s:
        usage = list(s.scalars(select(UsageRecord).where(
            UsageRecord.kind == "replica", UsageRecord.name == name)))
        changes = sum(1 for e in s.scalars(select(Event).where(
            Event.kind == "deployment", Event.object_id == dep_id, Event.created_at <= w1))
            if e.reason in SCALING_REASONS)
    replica_s = 0.0
    first_start: dict[str, datetime] = {}
    for u in usage:
        length = (u.period_end - u.period_start).total_seconds()
        overlap = (min(u.period_end, w1) - max(u.period_start, w0)).total_seconds()
        if length > 0 and overlap > 0:
            replica_s += u.seconds * overlap / length
        first_start[u.object_id] = min(first_start.get(u.object_id, u.period_start),
                                       u.period_start)
    ok = [o for o in outs if o.status == 200]
    within = sum(1 for o in ok if o.wait_s <= goal_s + 1e-9)
    return RealResult(
        name=name, requests=len(outs), failed=len(outs) - len(ok),
        replica_seconds=replica_s, within_goal_pct=100.0 * within / len(outs),
        p50_wait_s=_pct([o.wait_s for o in ok], 0.5),
        p99_wait_s=_pct([o.wait_s for o in ok], 0.99),
        p99_latency_s=_pct([o.latency_s for o in outs], 0.99),
        scaling_changes=changes,
        cold_starts=sum(1 for t in first_start.values() if w0 <= t <= w1),
        span_s=(w1 - w0).total_seconds(),
        p99_client_lag_s=_pct([o.lag_s for o in outs], 0.99), cold_start_s=cold)


def _run(cloud: Cloud, db: Database, spec: dict[str, Any], reqs: list[TraceRequest],
         model: ReplicaModel, goal_s: float, ready_status: str) -> RealResult:
    r = cloud.api("POST", "/deployments", json=spec)
    if r.status_code != 201:
        raise RuntimeError(r.text)
    dep_id = r.json()["id"]
    cloud.wait(spec["name"], ready_status, timeout_s=180)
    wall_ref = datetime.now(UTC)
    mono_ref = time.perf_counter()
    outs, t0, t_last = asyncio.run(_send_all(cloud, spec["name"], reqs, model))
    w0 = wall_ref + timedelta(seconds=t0 - mono_ref)
    w1 = wall_ref + timedelta(seconds=t_last - mono_ref)
    with db.session() as s:
        cold = [(x.ready_at - x.created_at).total_seconds() for x in s.scalars(select(
            Replica).where(Replica.deployment_id == dep_id)) if x.ready_at is not None]
    cloud.delete(spec["name"])
    with db.session() as s:  # the delete stopped and metered every replica
        if s.get(Deployment, dep_id) is not None:
            raise RuntimeError(f"deployment {spec['name']} was not deleted")
    return _figures(db, dep_id, spec["name"], outs, w0, w1, goal_s, cold)


def _row(label: str, replica_s: float, within: float, p99: float, changes: int, cold: int,
         extra: str = "") -> str:
    return (f"| {label} | {replica_s:.1f} | {within:.2f} | {p99:.2f} | {changes} | {cold} "
            f"| {extra} |")


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--start", type=float, default=1751.0, help="trace second to start at")
    ap.add_argument("--duration", type=float, default=900.0, help="trace seconds replayed")
    ap.add_argument("--every", type=int, default=4, help="keep every k-th request")
    ap.add_argument("--compress", type=float, default=10.0, help="time compression factor")
    ap.add_argument("--tick", type=float, default=0.5, help="reconcile interval, real s")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency-goal", type=float, default=1.0, help="trace seconds")
    ap.add_argument("--max-replicas", type=int, default=16)
    ap.add_argument("--no-fixed", action="store_true", help="skip the fixed fleet")
    args = ap.parse_args()
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    t_start = time.perf_counter()
    c = args.compress
    trace = window(load_azure_trace(args.trace), args.start, args.start + args.duration)
    reqs = [TraceRequest(r.at / c, r.prompt_tokens, r.output_tokens)
            for r in trace[::args.every]]
    goal_s = args.latency_goal / c
    config = AutoscalingConfig(
        min_replicas=0, max_replicas=args.max_replicas, target=7.0, window_s=30.0 / c,
        panic_window_s=6.0 / c, panic_threshold=2.0, tolerance=0.1, scale_up_delay_s=0.0,
        scale_down_delay_s=120.0 / c, scale_to_zero_delay_s=600.0 / c)
    model_nominal = ReplicaModel(MEASURED_PREFILL_S_PER_TOKEN / c,
                                 MEASURED_DECODE_S_PER_TOKEN / c,
                                 concurrency=args.concurrency, cold_start_s=1.0)
    peak = min(args.max_replicas, peak_replicas(reqs, model_nominal, args.tick))
    print(f"slice [{args.start:g}, {args.start + args.duration:g}) s of the trace, every "
          f"{args.every}th request: {len(reqs)} requests; compressed {c:g}x to "
          f"{reqs[-1].at:.0f} s; service = (prompt x {MEASURED_PREFILL_S_PER_TOKEN * 1000:.2f} "
          f"ms + generated x {MEASURED_DECODE_S_PER_TOKEN * 1000:.1f} ms) / {c:g}; "
          f"{args.concurrency} per replica; goal: wait <= {goal_s * 1000:.0f} ms "
          f"({args.latency_goal:g} s of trace time); tick {args.tick:g} s; peak fleet {peak}")

    os.environ["NEOCLOUD_RECONCILE_INTERVAL_S"] = str(args.tick)
    results: dict[str, RealResult] = {}
    with tempfile.TemporaryDirectory(prefix="neocloud-replay-") as tmp:
        folder = Path(tmp)
        (folder / "replay_stub.py").write_text(STUB)
        env = {"REPLAY_PREFILL_S_PER_TOKEN": repr(model_nominal.prefill_s_per_token),
               "REPLAY_DECODE_S_PER_TOKEN": repr(model_nominal.decode_s_per_token),
               "REPLAY_CONCURRENCY": str(args.concurrency)}
        base: dict[str, Any] = {"service": f"{folder / 'replay_stub.py'}:ReplayStub",
                                "shape": SHAPE["name"], "env": env,
                                "cold_start_timeout_s": 120, "drain_timeout_s": 60}
        cloud = Cloud(folder / "home")
        db = Database(f"sqlite:///{folder / 'home' / 'neocloud.db'}")
        try:
            r = cloud.api("POST", "/shapes", json=SHAPE)
            if r.status_code != 201:
                raise RuntimeError(r.text)
            results["autoscaled"] = _run(
                cloud, db, {**base, "name": "replay-auto", "replicas": 0,
                            "autoscaling": config.model_dump(mode="json")},
                reqs, model_nominal, goal_s, "scaled_to_zero")
            print(f"autoscaled run done in {time.perf_counter() - t_start:.0f} s", flush=True)
            if not args.no_fixed:
                results["fixed"] = _run(
                    cloud, db, {**base, "name": "replay-fixed", "replicas": peak},
                    reqs, model_nominal, goal_s, "ready")
        finally:
            cloud.stop()
            db.dispose()

    auto = results["autoscaled"]
    cold_s = statistics.median(auto.cold_start_s) if auto.cold_start_s else 1.0
    model = ReplicaModel(model_nominal.prefill_s_per_token, model_nominal.decode_s_per_token,
                         concurrency=args.concurrency, cold_start_s=cold_s)
    common: dict[str, Any] = dict(tick_s=args.tick, latency_goal_s=goal_s, warmup_s=0.0)
    (sim_auto,) = compare(reqs, model, config, ("target",), initial_replicas=0, **common)
    sims: dict[str, SimResult] = {"autoscaled": sim_auto}
    if "fixed" in results:
        (sims["fixed"],) = compare(reqs, model, config, ("fixed",), fixed_replicas=peak,
                                   **common)

    print(f"\ncold start measured (replica created -> ready, median of "
          f"{len(auto.cold_start_s)}): {cold_s:.2f} s (used by the simulator)")
    print("| run | replica-s | % within goal | p99 latency s | changes | cold starts | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    out: dict[str, Any] = {}
    for key, real in results.items():
        sim = sims[key]
        print(_row(f"{key}, real", real.replica_seconds, real.within_goal_pct,
                   real.p99_latency_s, real.scaling_changes, real.cold_starts,
                   f"{real.failed} failed; wait p50 {real.p50_wait_s * 1000:.0f} ms, p99 "
                   f"{real.p99_wait_s * 1000:.0f} ms; client lag p99 "
                   f"{real.p99_client_lag_s * 1000:.0f} ms"))
        print(_row(f"{key}, simulated", sim.replica_seconds, sim.within_goal_pct,
                   sim.p99_latency_s, sim.scaling_changes, sim.cold_starts,
                   f"wait p99 {sim.p99_wait_s * 1000:.0f} ms; max {sim.max_replicas} replicas"))
        ratios = {
            "replica_seconds": _ratio(real.replica_seconds, sim.replica_seconds),
            "within_goal_pct": _ratio(real.within_goal_pct, sim.within_goal_pct),
            "p99_latency_s": _ratio(real.p99_latency_s, sim.p99_latency_s),
            "scaling_changes": _ratio(real.scaling_changes, sim.scaling_changes),
            "cold_starts": _ratio(real.cold_starts, sim.cold_starts),
        }
        print(f"| {key}, real / simulated | " + " | ".join(
            "n/a" if v is None else f"{v}x" for v in ratios.values()) + " | |")
        out[key] = {"real": {k: (round(v, 4) if isinstance(v, float) else v)
                             for k, v in vars(real).items() if k != "cold_start_s"},
                    "simulated": sim.to_dict(), "real_vs_simulated": ratios}
    if "fixed" in results:
        print(f"\nautoscaled vs fixed fleet of {peak}, replica-seconds: real "
              f"{_ratio(auto.replica_seconds, results['fixed'].replica_seconds)}x, simulated "
              f"{_ratio(sim_auto.replica_seconds, sims['fixed'].replica_seconds)}x")
    figures = {
        "slice": {"start_s": args.start, "duration_s": args.duration, "every": args.every,
                  "requests": len(reqs)},
        "compress": c, "tick_s": args.tick, "latency_goal_s": goal_s, "peak_fleet": peak,
        "cold_start_s": round(cold_s, 3), "load_average": os.getloadavg(), **out,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if "fixed" in results:
        figures["autoscaled_vs_fixed_replica_seconds"] = {
            "real": _ratio(auto.replica_seconds, results["fixed"].replica_seconds),
            "simulated": _ratio(sim_auto.replica_seconds, sims["fixed"].replica_seconds)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
