"""Choose running work to preempt so that higher-priority work fits.

Rules: only work that allows preemption (``preemptible``) and has a strictly lower priority
than the incoming work is ever chosen. Among the sets that make room, the search prefers
fewer victims, then lower priorities:

* one request: for each node that could take it, the lowest-priority victims bound there are
  added (lowest priority first; among equal priority, the largest first) until the node has
  room; the node whose victim set is smallest (then has the lowest highest priority, then the
  lowest priority sum) wins;
* a gang: victims are added in the same global order until the whole gang fits, then each
  chosen victim (highest priority first) is dropped again if the gang still fits without it.

This follows the Kubernetes scheduler's preemption (pick a node, remove the lowest-priority
pods there, prefer nodes with fewer and lower-priority victims; kubernetes.io, "Pod
Priority and Preemption") and extends it to gangs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neocloud.server.scheduler.index import ClusterIndex, dyn_fits, give_back
from neocloud.server.scheduler.placement import place_gang, release_binding
from neocloud.server.scheduler.types import (
    Binding,
    NodeSnapshot,
    ResourceRequest,
    Unschedulable,
)


@dataclass(frozen=True)
class RunningWork:
    """Work that holds resources now.

    Attributes:
        id: the workload's id (a replica, a job, a pod).
        priority: larger is more important.
        preemptible: whether the work allows being stopped for more important work.
        bindings: everything it holds (several for a gang).
    """

    id: str
    priority: int
    preemptible: bool
    bindings: tuple[Binding, ...]


def _without(nodes: Sequence[NodeSnapshot], victims: Sequence[RunningWork]) -> list[NodeSnapshot]:
    out = list(nodes)
    for work in victims:
        for b in work.bindings:
            out = release_binding(out, b)
    return out


def _fits(nodes: Sequence[NodeSnapshot], requests: Sequence[ResourceRequest], policy: str) -> bool:
    return not isinstance(place_gang(nodes, requests, policy=policy), Unschedulable)


def select_victims(
    nodes: Sequence[NodeSnapshot],
    running: Sequence[RunningWork],
    requests: ResourceRequest | Sequence[ResourceRequest],
    priority: int,
    *,
    policy: str = "default",
) -> list[str] | Unschedulable:
    """Ids of the work to preempt so that ``requests`` (one request or a gang) fit.

    Args:
        nodes: the inventory snapshot with the running work's allocations taken (unchanged).
        running: the work holding resources.
        requests: one request, or the workers of a gang (all must fit).
        priority: priority of the incoming work; only strictly lower, preemptible work is chosen.
        policy: placement policy used to check that the requests fit.

    Returns:
        The victims' ids (empty when the requests fit already), or :class:`Unschedulable`
        when even stopping every eligible workload would not make room.

    Raises:
        ValueError: when a running workload's binding does not match the snapshot.
    """
    reqs = [requests] if isinstance(requests, ResourceRequest) else list(requests)
    if not reqs:
        return []
    if _fits(nodes, reqs, policy):
        return []
    eligible = sorted(
        (w for w in running if w.preemptible and w.priority < priority),
        key=lambda w: (w.priority, -sum(b.total_gpu_milli for b in w.bindings), w.id),
    )
    if not eligible or not _fits(_without(nodes, eligible), reqs, policy):
        return Unschedulable(
            f"no room even after preempting all {len(eligible)} preemptible workload(s) "
            f"with priority below {priority}"
        )
    if len(reqs) == 1:
        chosen = _single_node_victims(nodes, eligible, reqs[0])
        if chosen is not None and _fits(_without(nodes, chosen), reqs, policy):
            return [w.id for w in chosen]
    chosen = []
    for work in eligible:
        chosen.append(work)
        if _fits(_without(nodes, chosen), reqs, policy):
            break
    for work in sorted(chosen, key=lambda w: (-w.priority, w.id)):
        rest = [w for w in chosen if w is not work]
        if _fits(_without(nodes, rest), reqs, policy):
            chosen = rest
    return [w.id for w in chosen]


def _single_node_victims(
    nodes: Sequence[NodeSnapshot], eligible: Sequence[RunningWork], request: ResourceRequest
) -> list[RunningWork] | None:
    """Best per-node victim set for one request (see module doc), or None."""
    index = ClusterIndex(nodes)
    best: tuple[tuple[int, int, int], list[RunningWork]] | None = None
    admitting = set(index.admitting_classes(request))
    for ordinal, node_id in enumerate(index.ids):
        if index.node_class[ordinal] not in admitting:
            continue
        cpu = index.cpu_free[ordinal]
        mem = index.mem_free[ordinal]
        free = list(index.gpu_free[ordinal])
        devices = index.device_indices(ordinal)
        victims: list[RunningWork] = []
        for work in eligible:
            here = [b for b in work.bindings if b.node_id == node_id]
            if not here:
                continue
            victims.append(work)
            for b in here:
                cpu += b.cpu_milli
                mem += b.memory_mib
                give_back(free, devices, b)
            if dyn_fits((cpu, mem, tuple(sorted(free, reverse=True))), request):
                key = (
                    len(victims),
                    max(w.priority for w in victims),
                    sum(w.priority for w in victims),
                )
                if best is None or key < best[0]:
                    best = (key, list(victims))
                break
    return None if best is None else best[1]
