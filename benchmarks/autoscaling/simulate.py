"""Autoscaling policies on the Azure LLM inference trace 2023, in the discrete-event simulator.

Steps (all in one run, figures relative to the oracle of the same run):
1. Split the trace by time: the first half tunes our policy, the second half validates it.
2. Tune: a grid over target, stable window, scale-down delay and dead band on the tuning
   half; keep the cheapest setting (replica-seconds) with at least 99.5 % of requests within
   the latency goal and fewer changes than Ray Serve's defaults on that half, and at most
   two changes after the first minute (and >= 99 % within goal) on constant loads at that
   half's rate.
3. Validate: ours with that setting, a fleet fixed for the peak, Ray Serve's defaults and
   the oracle on the validation half (the goals are judged here), then on the whole trace.
4. Constant load: Poisson arrivals at the trace's mean rate for 30 minutes after the
   warm-up, request sizes drawn from the trace (seeds 1-3; tuning used seeds 0, 4, 5 at the
   tuning half's rate); changes after the first minute.
5. Cold-start sensitivity of the chosen setting on the validation half (10 s and 60 s).

Prints ``uptime``, tables, and as the last line one JSON object with the figures and goals.
Usage: ``.venv/bin/python benchmarks/autoscaling/simulate.py [--trace CSV] [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from neocloud.models.autoscaling import AutoscalingConfig
from neocloud.server.autoscaling import RayServeDefaultPolicy, RayServeSettings
from neocloud.simulate.autoscaling import (
    MEASURED_DECODE_S_PER_TOKEN,
    MEASURED_PREFILL_S_PER_TOKEN,
    ReplicaModel,
    SimResult,
    compare,
    constant_load,
    load_azure_trace,
    oracle_plan,
    simulate,
    warm_start,
    window,
)

HERE = Path(__file__).resolve().parent
TRACE = HERE.parents[2] / "shared" / "traces" / "azure-llm-inference-2023" / \
    "AzureLLMInferenceTrace_conv.csv"
TUNING_SEEDS = (0, 4, 5)
VALIDATION_SEEDS = (1, 2, 3)
COLS = ("replica_seconds", "within_goal_pct", "p99_latency_s", "p99_wait_s",
        "scaling_changes", "changes_after_first_minute", "cold_starts", "max_replicas")


def table(title: str, results: list[SimResult]) -> str:
    oracle = next(r for r in results if r.policy == "oracle")
    lines = [f"\n{title}",
             "| policy | replica-s | vs oracle | % within goal | p99 latency s | p99 wait s "
             "| changes | after 1st min | cold starts | max replicas |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r.policy} | {r.replica_seconds:.0f} | "
            f"{r.replica_seconds / oracle.replica_seconds:.3f}x | {r.within_goal_pct:.2f} | "
            f"{r.p99_latency_s:.1f} | {r.p99_wait_s:.2f} | {r.scaling_changes} | "
            f"{r.changes_after_first_minute} | {r.cold_starts} | {r.max_replicas} |")
    return "\n".join(lines)


def by_name(results: list[SimResult]) -> dict[str, SimResult]:
    return {r.policy: r for r in results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--cold-start", type=float, default=30.0)
    ap.add_argument("--latency-goal", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, default=120.0)
    ap.add_argument("--quick", action="store_true", help="A smaller tuning grid.")
    args = ap.parse_args()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    t_start = time.perf_counter()

    requests = load_azure_trace(args.trace)
    model = ReplicaModel(prefill_s_per_token=MEASURED_PREFILL_S_PER_TOKEN,
                         decode_s_per_token=MEASURED_DECODE_S_PER_TOKEN,
                         concurrency=args.concurrency, cold_start_s=args.cold_start)
    span = requests[-1].at
    half = span / 2
    tune = window(requests, 0.0, half)
    valid = window(requests, half, span + 1)
    common: dict[str, Any] = dict(latency_goal_s=args.latency_goal, warmup_s=args.warmup)
    mean_service = statistics.mean(model.service_s(r) for r in requests)
    print(f"trace: {len(requests)} requests over {span:.0f} s; tuning half [0, {half:.0f}) s "
          f"({len(tune)} requests), validation half [{half:.0f}, {span:.0f}] s "
          f"({len(valid)} requests)")
    print(f"replica: prefill {1000 * model.prefill_s_per_token:.2f} ms/token, decode "
          f"{1000 * model.decode_s_per_token:.1f} ms/token (benchmarks/serving, SmolLM2-135M), "
          f"{model.concurrency} concurrent requests, cold start {model.cold_start_s:g} s; "
          f"mean service {mean_service:.1f} s; goal: wait <= {args.latency_goal:g} s; "
          f"warm-up {args.warmup:g} s left out")

    bounds: dict[str, Any] = dict(min_replicas=1, max_replicas=64)
    base = by_name(compare(tune, model, AutoscalingConfig(**bounds),
                           ("ray-serve-default", "oracle"), **common))
    grid = dict(target=[6.0, 6.5, 7.0, 7.5], window_s=[30.0, 60.0, 120.0],
                scale_down_delay_s=[120.0, 300.0, 600.0], tolerance=[0.1, 0.2])
    if args.quick:
        grid = dict(target=[6.0, 6.5, 7.0], window_s=[60.0], scale_down_delay_s=[300.0],
                    tolerance=[0.1])
    # constant loads for tuning too, from the tuning half (seeds 0, 4, 5; validation: 1-3)
    tune_steady = [constant_load(len(tune) / half, 1200.0 + args.warmup, tune, seed=seed)
                   for seed in TUNING_SEEDS]
    tried = []
    for values in itertools.product(*grid.values()):
        kw = dict(zip(grid.keys(), values, strict=True))
        cfg = AutoscalingConfig(**bounds, scale_to_zero_delay_s=600.0, **kw)  # type: ignore[arg-type]
        (r,) = compare(tune, model, cfg, ("target",), **common)
        steady_ok = True
        for load in tune_steady:
            (c,) = compare(load, model, cfg, ("target",), **common)
            steady_ok = steady_ok and c.changes_after_first_minute <= 2 \
                and c.within_goal_pct >= 99.0
            if not steady_ok:
                break
        tried.append((kw, r, steady_ok))
    ok = [(kw, r) for kw, r, steady_ok in tried if r.within_goal_pct >= 99.5
          and r.scaling_changes < base["ray-serve-default"].scaling_changes and steady_ok]
    if not ok:
        raise SystemExit("no setting met the tuning criteria")
    best_kw, best = min(ok, key=lambda x: (x[1].replica_seconds, x[1].scaling_changes))
    print(f"\ntuning: {len(tried)} settings, {len(ok)} met >= 99.5 % within goal, fewer "
          f"changes than Ray Serve's defaults ({base['ray-serve-default'].scaling_changes}) on "
          f"the tuning half and <= 2 changes after the first minute (>= 99 % within goal) on "
          f"constant loads at its rate (seeds {TUNING_SEEDS}); chosen {best_kw}: "
          f"{best.replica_seconds / base['oracle'].replica_seconds:.3f}x oracle, "
          f"{best.within_goal_pct:.2f} %, {best.scaling_changes} changes on the tuning half")
    chosen = AutoscalingConfig(**bounds, scale_to_zero_delay_s=600.0, **best_kw)  # type: ignore[arg-type]

    tuned = compare(tune, model, chosen, **common)
    validated = compare(valid, model, chosen, **common)
    whole = compare(requests, model, chosen, **common)
    rate = len(requests) / span
    # the load runs through the warm-up too, so the first minute counted is of a load that
    # was already constant
    steadies = {seed: compare(constant_load(rate, 1800.0 + args.warmup, requests, seed=seed),
                              model, chosen, **common)
                for seed in VALIDATION_SEEDS}
    constant = steadies[VALIDATION_SEEDS[0]]
    worst_constant = max(by_name(r)["target"].changes_after_first_minute
                         for r in steadies.values())
    print(table("Tuning half (seen while tuning)", tuned))
    # Ray Serve's policy with our target instead of its default of 2: the delay logic alone
    ray_same = simulate(valid, RayServeDefaultPolicy(RayServeSettings(
        min_replicas=1, max_replicas=64, target_ongoing_requests=chosen.target), 1.0), model,
        initial_replicas=warm_start(oracle_plan(valid, model, 1.0, 64), 1.0, args.warmup),
        **common)[0]
    ray_same.policy = f"ray-serve, target {chosen.target:g}"
    validated = [*validated[:2], ray_same, *validated[2:]]
    print(table("Validation half (goals judged here)", validated))
    print(table("Whole trace", whole))
    print(table(f"Constant load: Poisson {rate:.2f} requests/s for 1800 s after the warm-up "
                f"(sizes from the trace, seed {VALIDATION_SEEDS[0]})", constant))
    print(f"constant load, seeds {VALIDATION_SEEDS}, ours: changes after the first minute "
          + ", ".join(str(by_name(r)["target"].changes_after_first_minute)
                      for r in steadies.values())
          + "; % within goal " + ", ".join(f"{by_name(r)['target'].within_goal_pct:.2f}"
                                          for r in steadies.values()))
    sens = {}
    for cs in (10.0, 60.0):
        m = ReplicaModel(model.prefill_s_per_token, model.decode_s_per_token,
                         model.concurrency, cs)
        res = by_name(compare(valid, m, chosen, ("target", "oracle"), **common))
        sens[f"cold_start_{cs:g}s"] = {
            "vs_oracle": round(res["target"].replica_seconds / res["oracle"].replica_seconds, 3),
            "within_goal_pct": round(res["target"].within_goal_pct, 3),
            "changes": res["target"].scaling_changes}
    print(f"\ncold-start sensitivity of the chosen setting (validation half): {sens}")

    v = by_name(validated)
    ours, oracle, ray = v["target"], v["oracle"], v["ray-serve-default"]
    figures = {
        "chosen": best_kw,
        "validation": {name: {k: round(getattr(r, k), 3) for k in COLS} for name, r in v.items()},
        "ours_vs_oracle_replica_seconds": round(ours.replica_seconds / oracle.replica_seconds, 3),
        "fixed_vs_oracle_replica_seconds": round(
            v["fixed"].replica_seconds / oracle.replica_seconds, 3),
        "ray_vs_oracle_replica_seconds": round(ray.replica_seconds / oracle.replica_seconds, 3),
        "ours_within_goal_pct": round(ours.within_goal_pct, 3),
        "ours_changes": ours.scaling_changes,
        "ray_changes": ray.scaling_changes,
        "constant_changes_after_first_minute": worst_constant,
        "whole_trace_ours_vs_oracle": round(
            by_name(whole)["target"].replica_seconds / by_name(whole)["oracle"].replica_seconds,
            3),
        "cold_start_sensitivity": sens,
        "goals": {
            "within_goal_ge_99pct": ours.within_goal_pct >= 99.0,
            "replica_seconds_le_1.25x_oracle":
                ours.replica_seconds <= 1.25 * oracle.replica_seconds,
            "fewer_changes_than_ray_default": ours.scaling_changes < ray.scaling_changes,
            "constant_load_le_2_changes_after_1st_minute": worst_constant <= 2,
        },
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
