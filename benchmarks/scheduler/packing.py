"""Benchmark 1: GPU packing by the FGD paper's protocol on every openb pod list.

For each ``openb_pod_list_*.csv`` in the traces folder and each seed, replays the list on the
1,213 GPU nodes of ``openb_node_list_gpu_node.csv`` (see ``neocloud.simulate.fgd_protocol``)
with several policies, and prints the mean GPU allocation at 100 % and 130 % of capacity
arrived, the fragmentation ratio at 90 %, and unallocated GPUs at 130 %, beside the authors'
published means (``fgd-atc23-results/summary_by_workload_policy.csv``).

Usage: python benchmarks/scheduler/packing.py [--traces DIR] [--quick] [--seeds 42-51] [--jobs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from neocloud.simulate import simulate_fgd_protocol

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_TRACES, table  # noqa: E402

POLICIES = ("random", "best-fit", "fgd", "fgd-pack")
PUBLISHED = {"random": "01-Random", "best-fit": "05-BestFit", "fgd": "06-FGD"}
TUNED_ON = ("default", "cpu250", "gpushare100", "gpuspec33", "multigpu50")
"""Pod lists the default policy was tuned on; every other list is validation."""
KEPT_ASIDE = ("cpu200", "gpushare60", "gpuspec20", "multigpu30")
"""Lists the trace keepers hold back for validation; run when present in the folder."""


def _run(args: tuple[str, str, str, int]) -> dict:
    nodes, pods, policy, seed = args
    return simulate_fgd_protocol(Path(nodes), Path(pods), policy=policy, seed=seed)


def _published(traces: Path) -> dict[tuple[str, str], dict[str, str]]:
    path = traces / "fgd-atc23-results" / "summary_by_workload_policy.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {(r["workload"], r["sc_policy"]): r for r in csv.DictReader(f)}


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="traces folder")
    ap.add_argument("--seeds", default="42-51", help="e.g. 42-51 or 42,43")
    ap.add_argument("--quick", action="store_true", help="seeds 42,43 only")
    ap.add_argument("--pods", default="", help="comma-separated pod list names (default: all)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = ap.parse_args()
    csv_dir = args.traces / "alibaba-gpu-v2023-openb" / "csv"
    nodes = csv_dir / "openb_node_list_gpu_node.csv"
    lists = sorted(csv_dir.glob("openb_pod_list_*.csv"))
    if args.pods:
        wanted = set(args.pods.split(","))
        lists = [p for p in lists if p.stem.removeprefix("openb_pod_list_") in wanted]
    seeds = [42, 43] if args.quick else _seeds(args.seeds)
    policies = args.policies.split(",")
    jobs = [(str(nodes), str(p), pol, s) for p in lists for pol in policies for s in seeds]
    t0 = time.perf_counter()
    with Pool(args.jobs) as pool:
        results = pool.map(_run, jobs, chunksize=1)
    wall = time.perf_counter() - t0
    published = _published(args.traces)
    by: dict[tuple[str, str], list[dict]] = {}
    for (_, pods, pol, _), r in zip(jobs, results, strict=True):
        by.setdefault((Path(pods).stem, pol), []).append(r)

    def mean(rs: list[dict], key: str) -> float:
        return round(sum(r[key] for r in rs) / len(rs), 2)

    summary = []
    rows = []
    for p in lists:
        name = p.stem
        short = name.removeprefix("openb_pod_list_")
        split = (
            "tuning"
            if short in TUNED_ON
            else ("kept-aside" if short in KEPT_ASIDE else "validation")
        )
        entry: dict = {"trace": short, "split": split}
        for pol in policies:
            rs = by[(name, pol)]
            m = {
                k: mean(rs, k)
                for k in (
                    "alloc_pct_at_100",
                    "alloc_pct_at_130",
                    "frag_ratio_pct_at_90",
                    "unalloc_gpus_at_130",
                )
            }
            pub = published.get((name, PUBLISHED.get(pol, "")))
            entry[pol] = m | (
                {"published_alloc_pct_at_130": float(pub["alloc_pct_at_130"])} if pub else {}
            )
            rows.append(
                [
                    short,
                    split,
                    pol,
                    m["alloc_pct_at_100"],
                    m["alloc_pct_at_130"],
                    m["frag_ratio_pct_at_90"],
                    m["unalloc_gpus_at_130"],
                    pub["alloc_pct_at_100"] if pub else "",
                    pub["alloc_pct_at_130"] if pub else "",
                    pub["frag_ratio_pct_at_90"] if pub else "",
                    pub["unalloc_gpus_at_130"] if pub else "",
                ]
            )
        ours = entry["fgd-pack"]["alloc_pct_at_130"] if "fgd-pack" in policies else None
        pub_fgd = published.get((name, "06-FGD"))
        if ours is not None and "fgd" in policies:
            entry["ours_minus_fgd_replay"] = round(ours - entry["fgd"]["alloc_pct_at_130"], 2)
        if ours is not None and pub_fgd:
            entry["ours_minus_fgd_published"] = round(ours - float(pub_fgd["alloc_pct_at_130"]), 2)
        summary.append(entry)
    print(
        f"FGD protocol, {len(seeds)} seed(s) {seeds[0]}..{seeds[-1]}, means; "
        "pub = authors' published mean"
    )
    print(
        table(
            [
                "trace",
                "split",
                "policy",
                "alloc@100",
                "alloc@130",
                "frag@90",
                "unalloc@130",
                "pub alloc@100",
                "pub alloc@130",
                "pub frag@90",
                "pub unalloc",
            ],
            rows,
        )
    )
    print()
    print(
        table(
            ["trace", "split", "ours - fgd (replay)", "ours - fgd (published)"],
            [
                [
                    e["trace"],
                    e["split"],
                    e.get("ours_minus_fgd_replay"),
                    e.get("ours_minus_fgd_published"),
                ]
                for e in summary
            ],
        )
    )
    print(f"\nwall time {wall:.0f} s with {args.jobs} process(es)")
    print(
        json.dumps(
            {"benchmark": "packing", "seeds": seeds, "wall_s": round(wall, 1), "traces": summary}
        )
    )


if __name__ == "__main__":
    main()
