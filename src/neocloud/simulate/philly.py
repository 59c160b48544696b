"""Queueing replay of the Philly job list with gangs, quotas and two queue policies.

Inputs (Microsoft Philly, as shipped with the Pollux/AdaptDL artifact): ``philly_jobs_pollux.csv``
(``timestamp,duration,num_gpus,gpu_time,cluster``), a machine list with GPU counts, and
``philly_vc.csv`` (virtual clusters and their size in nodes). Jobs are rigid: each runs for
its recorded duration once all its workers are placed. A job of at most 8 GPUs is one worker
on one node; a larger job is a gang of 8-GPU workers (the last one smaller when the count is
not a multiple of 8) placed all at once or not at all.

Virtual clusters are workspaces. Each gets a guaranteed GPU share proportional to its node
count in ``philly_vc.csv`` (VCs not listed get none); work beyond the share may borrow idle
GPUs.

Queue policies:

``fifo``
    One queue in arrival order; the head must start before anything behind it (head-of-line
    blocking), as a plain FIFO gang scheduler does.
``fair-backfill`` (ours)
    Jobs within their VC's guarantee go first, then borrowers, each in arrival order; any
    job that fits starts (backfilling), except that once the oldest waiting job has waited
    ``starvation_s`` nothing may start before it (a reservation against starving large
    gangs).

Placement of every worker uses the scheduler's policies (``fgd-pack`` by default, with the
job-size mix as target workload).
"""

from __future__ import annotations

import csv
import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from neocloud.server.scheduler.frag import WorkClass, Workload
from neocloud.server.scheduler.index import ClusterIndex
from neocloud.server.scheduler.policies import make_policy
from neocloud.server.scheduler.types import MILLI, Binding, NodeSnapshot, ResourceRequest
from neocloud.simulate.inventory import make_node

GPUS_PER_WORKER = 8
QUEUE_POLICIES = ("fifo", "fair-backfill")


@dataclass(frozen=True)
class Job:
    """One rigid job: arrival and duration in seconds, GPUs, and its virtual cluster."""

    id: int
    arrival_s: float
    duration_s: float
    gpus: int
    vc: str

    def workers(self) -> list[ResourceRequest]:
        """The job's workers: one for <= 8 GPUs, else 8-GPU workers plus a remainder."""
        if self.gpus <= GPUS_PER_WORKER:
            sizes = [self.gpus]
        else:
            full, rest = divmod(self.gpus, GPUS_PER_WORKER)
            sizes = [GPUS_PER_WORKER] * full + ([rest] if rest else [])
        return [ResourceRequest(0, 0, gpu_count=s) for s in sizes]


def load_philly_machines(path: Path) -> list[NodeSnapshot]:
    """GPU machines of a Philly machine list (``revised_machine_list.csv`` or the original
    ``cluster_machine_list.csv``); machines without GPUs are left out.

    Raises:
        ValueError: when no column names the GPU count.
    """
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    key_id = next((k for k in rows[0] if k and k.strip() == "machineId"), None)
    key_gpu = next((k for k in rows[0] if k and "number of GPUs" in k), None)
    if key_id is None or key_gpu is None:
        raise ValueError(f"{path}: expected columns machineId and 'number of GPUs'")
    out = []
    for row in rows:
        gpus = int(row[key_gpu])
        if gpus > 0:
            out.append(
                make_node(
                    row[key_id].strip(),
                    cpu_milli=4 * MILLI * gpus,
                    memory_mib=0,
                    gpus=gpus,
                    gpu_type="philly",
                )
            )
    return out


def first_gpus(nodes: Sequence[NodeSnapshot], gpus: int) -> list[NodeSnapshot]:
    """The first machines of a list that together hold at least ``gpus`` GPUs (a smaller
    cluster for a sampled job list; the Pollux and Sia studies replay Philly samples on 64
    GPUs)."""
    out: list[NodeSnapshot] = []
    total = 0
    for n in nodes:
        if total >= gpus:
            break
        out.append(n)
        total += len(n.gpus)
    return out


def load_philly_jobs(path: Path, *, skip_days: float = 0.0, days: float | None = None) -> list[Job]:
    """Jobs sorted by arrival, times in seconds from the first kept arrival.

    Args:
        path: ``philly_jobs_pollux.csv``.
        skip_days: drop jobs arriving in the first ``skip_days`` days of the trace.
        days: then keep only jobs arriving within this many days.
    """
    with Path(path).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("timestamp")]
    stamps = [datetime.fromisoformat(r["timestamp"]).timestamp() for r in rows]
    order = sorted(range(len(rows)), key=lambda i: stamps[i])
    first = stamps[order[0]] if order else 0.0
    order = [i for i in order if stamps[i] - first >= skip_days * 86400]
    t0 = stamps[order[0]] if order else 0.0
    jobs = []
    for i in order:
        at = stamps[i] - t0
        if days is not None and at > days * 86400:
            break
        r = rows[i]
        jobs.append(Job(len(jobs), at, float(r["duration"]), int(r["num_gpus"]), r["cluster"]))
    return jobs


def load_vc_shares(path: Path, total_gpus: int) -> dict[str, int]:
    """Guaranteed GPUs per VC: its node count's share of all listed nodes, times ``total_gpus``."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    nodes = {r["vc"]: int(r["node num"]) for r in rows}
    total = sum(nodes.values()) or 1
    return {vc: int(n * total_gpus / total) for vc, n in nodes.items()}


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))
    return s[k]


def replay_gang_queue(
    nodes: Sequence[NodeSnapshot],
    jobs: Sequence[Job],
    *,
    queue_policy: str,
    shares: dict[str, int] | None = None,
    placement: str = "fgd-pack",
    starvation_s: float = 24 * 3600,
) -> dict[str, Any]:
    """Replay ``jobs`` on ``nodes``; returns JCT, queueing delay and utilisation figures.

    Returns:
        A JSON-ready dict: ``jobs``, ``avg_jct_s``, ``median_jct_s``, ``p99_jct_s``,
        ``avg_queue_s``, ``median_queue_s``, ``p99_queue_s``, ``gpu_util_pct`` (busy
        GPU-seconds over capacity x makespan), ``makespan_s``, ``gang_jobs``, ``wall_s``.

    Raises:
        ValueError: unknown queue policy, or a job larger than the whole cluster.
    """
    if queue_policy not in QUEUE_POLICIES:
        raise ValueError(
            f"unknown queue policy {queue_policy!r}; choose one of {', '.join(QUEUE_POLICIES)}"
        )
    index = ClusterIndex(nodes)
    capacity = sum(len(g) for g in index.gpu_free)
    if any(j.gpus > capacity for j in jobs):
        raise ValueError("a job asks for more GPUs than the cluster has")
    sizes: dict[int, int] = {}
    for j in jobs:
        for w in j.workers():
            sizes[w.gpu_count] = sizes.get(w.gpu_count, 0) + 1
    workload = Workload.from_weights(
        (WorkClass(0, MILLI, k, ()), float(n)) for k, n in sizes.items()
    )
    chooser = make_policy(placement, workload=workload)
    shares = shares or {}
    used_by_vc: dict[str, int] = {}
    free_total = capacity
    queue: list[Job] = []
    running: list[tuple[float, int, tuple[Binding, ...]]] = []
    start: dict[int, float] = {}
    finish: dict[int, float] = {}
    next_arrival = 0
    busy_gpu_s = 0.0
    wall0 = time.perf_counter()

    def max_node_free() -> int:
        best = 0
        for groups in index.groups:
            for dyn in groups:
                n = sum(1 for g in dyn[2] if g == MILLI)
                best = max(best, n)
        return best

    def try_start(job: Job, now: float) -> bool:
        nonlocal free_total, busy_gpu_s
        placed: list[Binding] = []
        for w in sorted(job.workers(), key=lambda r: -r.gpu_count):
            choice = chooser.select(index, w)
            if choice is None:
                for b in placed:
                    index.release(b)
                return False
            placed.append(index.bind(choice[0], w, choice[1]))
        free_total -= job.gpus
        used_by_vc[job.vc] = used_by_vc.get(job.vc, 0) + job.gpus
        start[job.id] = now
        busy_gpu_s += job.gpus * job.duration_s
        heapq.heappush(running, (now + job.duration_s, job.id, tuple(placed)))
        return True

    def schedule(now: float) -> None:
        if not queue:
            return
        if queue_policy == "fifo":
            while queue and queue[0].gpus <= free_total and try_start(queue[0], now):
                queue.pop(0)
            return
        oldest = queue[0]
        guarded = now - oldest.arrival_s >= starvation_s
        if guarded:
            if oldest.gpus <= free_total and try_start(oldest, now):
                queue.pop(0)
                schedule(now)
            return
        within = [j for j in queue if used_by_vc.get(j.vc, 0) + j.gpus <= shares.get(j.vc, 0)]
        within_ids = {j.id for j in within}
        order = within + [j for j in queue if j.id not in within_ids]
        node_free = max_node_free()
        started: set[int] = set()
        for job in order:
            if free_total == 0:
                break
            if job.gpus > free_total or (job.gpus <= GPUS_PER_WORKER and job.gpus > node_free):
                continue
            # a job may have become over-quota after earlier starts in this pass; it still
            # only borrows idle GPUs, which is what the second half of the order means.
            if try_start(job, now):
                started.add(job.id)
                node_free = max_node_free()
        if started:
            queue[:] = [j for j in queue if j.id not in started]

    while next_arrival < len(jobs) or running:
        t_arr = jobs[next_arrival].arrival_s if next_arrival < len(jobs) else float("inf")
        t_fin = running[0][0] if running else float("inf")
        now = min(t_arr, t_fin)
        while running and running[0][0] <= now:
            end, jid, bindings = heapq.heappop(running)
            for b in bindings:
                index.release(b)
            job = jobs[jid]
            free_total += job.gpus
            used_by_vc[job.vc] -= job.gpus
            finish[jid] = end
        while next_arrival < len(jobs) and jobs[next_arrival].arrival_s <= now:
            queue.append(jobs[next_arrival])
            next_arrival += 1
        schedule(now)
        if not running and queue and next_arrival >= len(jobs):
            raise ValueError("jobs left in the queue can never start")  # pragma: no cover

    jct = [finish[j.id] - j.arrival_s for j in jobs]
    wait = [start[j.id] - j.arrival_s for j in jobs]
    span = (max(finish.values()) - jobs[0].arrival_s) if jobs else 0.0
    return {
        "queue_policy": queue_policy,
        "placement": placement,
        "jobs": len(jobs),
        "gang_jobs": sum(1 for j in jobs if j.gpus > GPUS_PER_WORKER),
        "gpus": capacity,
        "avg_jct_s": round(sum(jct) / len(jct), 1) if jct else 0.0,
        "median_jct_s": round(_pct(jct, 0.5), 1),
        "p99_jct_s": round(_pct(jct, 0.99), 1),
        "avg_queue_s": round(sum(wait) / len(wait), 1) if wait else 0.0,
        "median_queue_s": round(_pct(wait, 0.5), 1),
        "p99_queue_s": round(_pct(wait, 0.99), 1),
        "gpu_util_pct": round(100 * busy_gpu_s / (capacity * span), 2) if span > 0 else 0.0,
        "makespan_s": round(span, 1),
        "wall_s": round(time.perf_counter() - wall0, 2),
    }
