"""Benchmark 3: gang queueing on the Philly job list, FIFO vs our queue policy.

Replays arrivals, durations and GPU counts of ``philly/philly_jobs_pollux.csv`` (jobs over 8
GPUs are gangs of 8-GPU workers) on machines of ``philly/revised_machine_list.csv``, with
virtual clusters as workspaces whose guaranteed shares come from ``philly/philly_vc.csv``
(see ``neocloud.simulate.philly``). The job list is a sample of Philly (about 170 GPUs busy
on average), so the full 3,205-GPU cluster never queues; the benchmark takes the first
machines holding ``--gpus`` GPUs, as the Pollux and Sia studies replay Philly samples on
small clusters.

Usage: python benchmarks/scheduler/philly_queueing.py [--traces DIR] [--gpus 512]
       [--skip-days 27] [--days 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from neocloud.simulate.philly import (
    QUEUE_POLICIES,
    first_gpus,
    load_philly_jobs,
    load_philly_machines,
    load_vc_shares,
    replay_gang_queue,
)

sys.path.insert(0, str(Path(__file__).parent))
from _common import DEFAULT_TRACES, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument(
        "--gpus", type=int, default=512, help="cluster size (first machines of the list)"
    )
    ap.add_argument(
        "--skip-days", type=float, default=27.0, help="start this many days into the trace"
    )
    ap.add_argument("--days", type=float, default=7.0, help="days of arrivals to replay")
    ap.add_argument("--quick", action="store_true", help="2 days of arrivals")
    args = ap.parse_args()
    d = args.traces / "philly"
    nodes = first_gpus(load_philly_machines(d / "revised_machine_list.csv"), args.gpus)
    days = 2.0 if args.quick else args.days
    jobs = load_philly_jobs(d / "philly_jobs_pollux.csv", skip_days=args.skip_days, days=days)
    shares = load_vc_shares(d / "philly_vc.csv", sum(len(n.gpus) for n in nodes))
    results = [
        replay_gang_queue(nodes, jobs, queue_policy=q, shares=shares) for q in QUEUE_POLICIES
    ]
    print(
        f"Philly replay: {len(jobs)} jobs ({results[0]['gang_jobs']} gangs) "
        f"arriving over {days:g} days "
        f"from day {args.skip_days:g}, {results[0]['gpus']} GPUs on {len(nodes)} machines"
    )
    print(
        table(
            [
                "policy",
                "avg JCT h",
                "median JCT h",
                "p99 JCT h",
                "avg queue h",
                "median queue h",
                "p99 queue h",
                "GPU util %",
                "makespan h",
            ],
            [
                [
                    r["queue_policy"],
                    round(r["avg_jct_s"] / 3600, 2),
                    round(r["median_jct_s"] / 3600, 2),
                    round(r["p99_jct_s"] / 3600, 1),
                    round(r["avg_queue_s"] / 3600, 2),
                    round(r["median_queue_s"] / 3600, 2),
                    round(r["p99_queue_s"] / 3600, 1),
                    r["gpu_util_pct"],
                    round(r["makespan_s"] / 3600, 1),
                ]
                for r in results
            ],
        )
    )
    print("\nPublished, for orientation only (other clusters, workloads and elastic schedulers):")
    print("  Philly production (Acme, 112,956 GPU jobs): avg queue 1.04 h, median queue 0.05 h")
    print(
        "  Pollux OSDI'21, 160-job 8 h workloads at 1.0x load: "
        "avg JCT Pollux 0.76 h, Tiresias 1.12 h"
    )
    print(
        json.dumps(
            {
                "benchmark": "philly_queueing",
                "gpus": results[0]["gpus"],
                "days": days,
                "skip_days": args.skip_days,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
