"""Packing replay by the protocol of the FGD paper (Weng et al., USENIX ATC 2023, section 6).

The protocol, as run by the authors' released simulator (hkust-adsl/kubernetes-scheduler-
simulator: ``SortClusterPods``, ``tuneUpPods``/``tuneDownPods`` in ``simulator.go``, and the
experiment script that sets ``--shuffle-pod=true -tune 1.3 -tuneseed <seed>``):

1. the pod list is put in name order and shuffled with the seed;
2. while the requested GPUs are below ``tune_ratio`` x cluster capacity, a pod drawn at
   random (with replacement) from the original list is appended; the loop stops at the first
   draw whose per-GPU share would overshoot (the released code compares the per-GPU share,
   not the total, and we keep that). A list already above the target loses random pods
   until it is not;
3. the node list is put in a seeded random order (the simulator renames nodes with a random
   permutation, and its scheduler keeps the first of equally scored nodes), and pods arrive
   one by one and never leave; a pod that no node can take is dropped;
4. after each arrival the GPU allocation ratio (allocated milli-GPU / capacity) and the
   fragmentation ratio (fragmented / free milli-GPU, against the trace's typical pods) are
   recorded against the arrived GPU request in % of capacity; the value "at x %" is the mean
   over arrivals whose arrived share rounds to x (or to x +/- 1 when none does), as in the
   authors' ``merge_alloc_discrete`` analysis (for tiny traces with no arrival near x, the
   value after the last arrival below x).

The target workload that fragmentation is measured against is derived from the original
pod list (``workload_from_requests``), for every policy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neocloud.server.scheduler.frag import Workload, node_frag, workload_from_requests
from neocloud.server.scheduler.index import ClusterIndex
from neocloud.server.scheduler.policies import make_policy
from neocloud.server.scheduler.types import MILLI, NodeSnapshot, ResourceRequest
from neocloud.simulate.inventory import load_nodes, load_openb_pods, replicate_nodes

REPORT_POINTS = (80, 90, 100, 110, 120, 130)
NODE_ORDER_SALT = 1000
"""The node order of seed ``s`` comes from ``random.Random(NODE_ORDER_SALT + s)``."""


def arrival_sequence(
    requests: Sequence[ResourceRequest], capacity_milli: int, *, seed: int, tune_ratio: float = 1.3
) -> list[ResourceRequest]:
    """The shuffled and tuned arrival order of the protocol (steps 1-2 of the module doc).

    Args:
        requests: the pod list in name order.
        capacity_milli: GPU capacity of the cluster in milli-GPU.
        seed: random seed (the paper uses 42..51).
        tune_ratio: requested GPUs as a multiple of capacity (1.3 in the paper).
    """
    rng = random.Random(seed)
    order = list(requests)
    rng.shuffle(order)
    total = sum(r.total_gpu_milli for r in order)
    target = tune_ratio * capacity_milli
    n = len(requests)
    if n and total < target:
        while True:
            extra = requests[rng.randrange(n)]
            if total + extra.per_gpu_milli > target:
                break
            total += extra.total_gpu_milli
            order.append(extra)
    elif total > target:
        while total > target and order:
            gone = order.pop(rng.randrange(len(order)))
            total -= gone.total_gpu_milli
    return order


class FragMeter:
    """Running cluster fragmentation (milli-GPU) against one workload, updated per node."""

    def __init__(self, index: ClusterIndex, workload: Workload) -> None:
        self._wl = workload.compiled()
        self._cache: dict[tuple[str, int, tuple[int, ...]], float] = {}
        self._index = index
        self.per_node = [self._of(o) for o in range(len(index))]
        self.total = sum(self.per_node)

    def _of(self, ordinal: int) -> float:
        idx = self._index
        key = (
            idx.classes[idx.node_class[ordinal]].gpu_type,
            idx.cpu_free[ordinal],
            idx.dyn[ordinal][2],
        )
        value = self._cache.get(key)
        if value is None:
            value = node_frag(key[0], key[1], key[2], self._wl)
            self._cache[key] = value
        return value

    def update(self, ordinal: int) -> None:
        """Re-measure one node after it changed."""
        new = self._of(ordinal)
        self.total += new - self.per_node[ordinal]
        self.per_node[ordinal] = new


def replay_fgd_protocol(
    nodes: Sequence[NodeSnapshot],
    requests: Sequence[ResourceRequest],
    *,
    policy: str,
    seed: int,
    tune_ratio: float = 1.3,
) -> dict[str, Any]:
    """Run the protocol on an inventory and a pod list; returns the figures (see
    :func:`simulate_fgd_protocol`)."""
    order = list(nodes)
    random.Random(NODE_ORDER_SALT + seed).shuffle(order)
    index = ClusterIndex(order)
    capacity = sum(len(g) for g in index.gpu_free) * MILLI
    if capacity == 0:
        raise ValueError("the fleet has no GPUs")
    workload = workload_from_requests(requests)
    arrivals = arrival_sequence(requests, capacity, seed=seed, tune_ratio=tune_ratio)
    chooser = make_policy(policy, workload=workload, seed=seed)
    meter = FragMeter(index, workload)
    used_gpu_milli = sum(MILLI * len(g) - sum(g) for g in index.gpu_free)
    arrived = 0
    placed = failed = 0
    max_groups = index.group_count()
    bins: dict[int, list[float]] = {}
    elapsed = 0.0
    for request in arrivals:
        arrived += request.total_gpu_milli
        t0 = time.perf_counter()
        choice = chooser.select(index, request)
        if choice is not None:
            ordinal, slots = choice
            index.bind(ordinal, request, slots)
        elapsed += time.perf_counter() - t0
        if choice is None:
            failed += 1
        else:
            placed += 1
            used_gpu_milli += request.total_gpu_milli
            meter.update(choice[0])
        idle = capacity - used_gpu_milli
        b = round(arrived / capacity * 100)
        acc = bins.get(b)
        if acc is None:
            acc = bins[b] = [0.0, 0.0, 0.0, 0.0]
        acc[0] += 1
        acc[1] += round(used_gpu_milli / capacity * 100, 2)
        acc[2] += meter.total / idle * 100 if idle else 0.0
        acc[3] += meter.total / capacity * 100
    if len(index) and placed + failed:
        max_groups = max(max_groups, index.group_count())

    def at(x: int, field: int) -> float | None:
        acc = bins.get(x)
        if acc is None:
            near = [bins[k] for k in (x - 1, x, x + 1) if k in bins]
            if not near:
                # coarse traces (few large pods): the state after the last arrival below x
                below = [k for k in bins if k < x]
                if not below:
                    return None
                near = [bins[max(below)]]
            n = sum(a[0] for a in near)
            return sum(a[field] for a in near) / n
        return acc[field] / acc[0]

    result: dict[str, Any] = {
        "policy": policy,
        "seed": seed,
        "nodes": len(index),
        "gpus": capacity // MILLI,
        "pods_arrived": len(arrivals),
        "pods_placed": placed,
        "pods_failed": failed,
    }
    for x in REPORT_POINTS:
        result[f"alloc_pct_at_{x}"] = _r(at(x, 1))
    for x in (80, 90, 100):
        result[f"frag_ratio_pct_at_{x}"] = _r(at(x, 2))
    result["frag_amount_pct_at_100"] = _r(at(100, 3))
    alloc130 = result["alloc_pct_at_130"]
    result["unalloc_gpus_at_130"] = (
        None if alloc130 is None else round((100 - alloc130) / 100 * capacity / MILLI, 1)
    )
    attempts = placed + failed
    result["placement_seconds"] = round(elapsed, 3)
    result["placements_per_s"] = round(attempts / elapsed, 1) if elapsed > 0 else None
    result["groups_at_end"] = index.group_count()
    return result


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def simulate_fgd_protocol(
    nodes_csv: Path,
    pods_csv: Path,
    *,
    policy: str,
    seed: int,
    tune_ratio: float = 1.3,
    node_copies: int = 1,
) -> dict[str, Any]:
    """Replay an openb pod list on a node list by the FGD protocol.

    Args:
        nodes_csv: node list (openb CSV, or a YAML node list).
        pods_csv: openb pod list CSV.
        policy: placement policy name (see ``neocloud.server.scheduler.POLICIES``).
        seed: seed of the shuffle, the inflation draws and the policy's tie-breaks.
        tune_ratio: requested GPUs as a multiple of capacity (1.3 in the paper).
        node_copies: replicate the fleet this many times (speed tests at 10x scale).

    Returns:
        A JSON-ready dict with at least ``alloc_pct_at_100``, ``alloc_pct_at_130`` (GPU
        allocation ratio in % at 100 % / 130 % of capacity arrived), ``frag_ratio_pct_at_90``
        (fragmented share of free GPU capacity in % at 90 % arrived),
        ``unalloc_gpus_at_130`` (GPUs left unallocated at the end), ``placements_per_s``
        (placement decisions per second of wall time spent choosing and binding), plus the
        other report points, pod counts and timing.

    Raises:
        ValueError: unknown policy, malformed files, or a fleet without GPUs.
    """
    nodes = load_nodes(nodes_csv)
    if node_copies > 1:
        nodes = replicate_nodes(nodes, node_copies)
    pods = load_openb_pods(pods_csv)
    return replay_fgd_protocol(
        nodes, [p.request for p in pods], policy=policy, seed=seed, tune_ratio=tune_ratio
    )
