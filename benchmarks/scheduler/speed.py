"""Benchmark 2: placement speed on the openb cluster (1,213 nodes) and a 10x copy (12,130).

Measures placement decisions per second (choose + bind, one process, one core) during the
FGD-protocol replay of ``openb_pod_list_default`` (seed 42) for the default policy, FGD,
best-fit and first-fit (``--quick``: the default policy only),
and, for comparison, the stateless ``place()`` call that rebuilds its index from a snapshot
on every call.

Usage: python benchmarks/scheduler/speed.py [--traces DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from neocloud.server.scheduler import ResourceRequest, place
from neocloud.simulate import load_openb_nodes, replicate_nodes, simulate_fgd_protocol

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_TRACES, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--quick", action="store_true", help="default policy only")
    args = ap.parse_args()
    csv_dir = args.traces / "alibaba-gpu-v2023-openb" / "csv"
    nodes_csv = csv_dir / "openb_node_list_gpu_node.csv"
    pods_csv = csv_dir / "openb_pod_list_default.csv"
    policies = ["default"] if args.quick else ["default", "fgd", "best-fit", "first-fit"]
    rows = []
    out = []
    for copies in (1, 10):
        for pol in policies:
            r = simulate_fgd_protocol(nodes_csv, pods_csv, policy=pol, seed=42, node_copies=copies)
            attempts = r["pods_placed"] + r["pods_failed"]
            rows.append(
                [
                    r["nodes"],
                    pol,
                    attempts,
                    r["placement_seconds"],
                    r["placements_per_s"],
                    r["groups_at_end"],
                ]
            )
            out.append(
                {
                    "nodes": r["nodes"],
                    "policy": pol,
                    "placements": attempts,
                    "placements_per_s": r["placements_per_s"],
                    "groups_at_end": r["groups_at_end"],
                }
            )
    print(
        "Incremental index (ClusterIndex + policy), "
        "FGD-protocol replay of openb_pod_list_default, seed 42"
    )
    print(
        table(["nodes", "policy", "placements", "seconds", "placements/s", "groups at end"], rows)
    )
    snap = load_openb_nodes(nodes_csv)
    ask = ResourceRequest(8000, 16384, gpu_count=1)
    stateless = []
    for copies in (1, 10):
        inv = replicate_nodes(snap, copies)
        n = 50 if copies == 1 else 10
        t0 = time.perf_counter()
        for _ in range(n):
            place(inv, ask)
        rate = n / (time.perf_counter() - t0)
        stateless.append([len(inv), round(rate, 1)])
        out.append(
            {"nodes": len(inv), "policy": "default", "stateless_place_per_s": round(rate, 1)}
        )
    print("\nStateless place(snapshot, request): builds the index on every call")
    print(table(["nodes", "calls/s"], stateless))
    print(json.dumps({"benchmark": "speed", "results": out}))


if __name__ == "__main__":
    main()
