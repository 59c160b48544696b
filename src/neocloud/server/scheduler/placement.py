"""The pure placement API: place one request, place a gang, and book bindings on snapshots.

All functions take an inventory snapshot and never change it: they build a
:class:`ClusterIndex` (O(number of nodes)) and work on that. Callers that place many
requests in a row (simulators, a reconciler pass) can keep one :class:`ClusterIndex` and one
policy object and call :func:`place_on` instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from neocloud.models.deployments import ReasonCode
from neocloud.server.scheduler.frag import Workload
from neocloud.server.scheduler.index import ClusterIndex, NodeClass, dyn_fits
from neocloud.server.scheduler.policies import Policy, make_policy
from neocloud.server.scheduler.types import (
    MILLI,
    Binding,
    GpuSlot,
    NodeSnapshot,
    ResourceRequest,
    Unschedulable,
)


def place(
    nodes: Sequence[NodeSnapshot],
    request: ResourceRequest,
    *,
    policy: str = "default",
    workload: Workload | None = None,
    seed: int = 0,
) -> Binding | Unschedulable:
    """Choose a node and GPUs for one request.

    Args:
        nodes: the inventory snapshot (not modified).
        request: what to place.
        policy: a name in ``POLICIES`` (``"default"`` is our fragmentation-aware policy).
        workload: the mix of requests the cluster expects (for fragmentation-aware
            policies); ``DEFAULT_WORKLOAD`` when omitted.
        seed: seed for policies that break ties at random.

    Returns:
        The :class:`Binding`, or :class:`Unschedulable` with a sentence saying why no node fits.

    Raises:
        ValueError: unknown policy name or an inconsistent snapshot (duplicate node ids).
    """
    return place_on(ClusterIndex(nodes), request, make_policy(policy, workload=workload, seed=seed))


def place_on(
    index: ClusterIndex, request: ResourceRequest, chooser: Policy
) -> Binding | Unschedulable:
    """Place one request on a live index, booking it there when it fits."""
    choice = chooser.select(index, request)
    if choice is None:
        return explain(index, request)
    ordinal, slots = choice
    return index.bind(ordinal, request, slots)


def place_gang(
    nodes: Sequence[NodeSnapshot],
    requests: Sequence[ResourceRequest],
    *,
    policy: str = "default",
    workload: Workload | None = None,
    seed: int = 0,
) -> list[Binding] | Unschedulable:
    """Place all workers of a gang, or none.

    Workers are placed largest first (GPU, then CPU) on a private copy of the snapshot, so a
    failing gang never holds GPUs; the bindings come back in the order of ``requests``.

    Returns:
        One binding per request, or :class:`Unschedulable` naming the worker that did not fit.

    Raises:
        ValueError: unknown policy name or an inconsistent snapshot.
    """
    index = ClusterIndex(nodes)
    chooser = make_policy(policy, workload=workload, seed=seed)
    order = sorted(
        range(len(requests)),
        key=lambda i: (-requests[i].total_gpu_milli, -requests[i].cpu_milli, i),
    )
    out: list[Binding | None] = [None] * len(requests)
    for placed, i in enumerate(order):
        result = place_on(index, requests[i], chooser)
        if isinstance(result, Unschedulable):
            n = len(requests)
            if placed:
                others = "1 other is" if placed == 1 else f"{placed} others are"
                return replace(result, reason=(
                    f"gang of {n} workers does not fit all at once: worker {i + 1} "
                    f"({requests[i].describe()}) has no room after {others} placed; "
                    f"{result.reason}"))
            return replace(result, reason=f"gang of {n} workers does not fit: {result.reason}")
        out[i] = result
    return [b for b in out if b is not None]


#: Static misses (see ``_static_miss``) and the code they give when they rule out every
#: node; the first one present wins (a node of the right type that is too small is the
#: nearer miss).
_NEVER_CODES: tuple[tuple[str, ReasonCode], ...] = (
    ("node(s) with fewer GPUs in total", ReasonCode.INSUFFICIENT_GPUS_PER_NODE),
    ("node(s) with another GPU type", ReasonCode.NO_MATCHING_GPU_TYPE),
    ("node(s) without GPUs", ReasonCode.NO_MATCHING_GPU_TYPE),
)


def explain(index: ClusterIndex, request: ResourceRequest) -> Unschedulable:
    """Why no node of ``index`` can take ``request`` right now: a sentence, its code, and
    whether no node could ever take it (every node is ruled out by its kind, not by the
    room left on it; a node ruled out only by its state, cordoned, draining or not
    ready, could take it once back, so the request waits for capacity)."""
    if not len(index):
        return Unschedulable("no nodes are registered")
    skipped: Counter[str] = Counter()
    best_id: str | None = None
    best_amount = -1
    blocked: Counter[str] = Counter()
    gpu_ok_somewhere = False
    back_later = False  # a node ruled out by its state alone (cordoned, not ready)
    for o, node_id in enumerate(index.ids):
        cls = index.classes[index.node_class[o]]
        why = _static_miss(cls, request)
        if why:
            skipped[why] += 1
            back_later |= cls.status != "ready" and _kind_miss(cls, request) is None
            continue
        cpu, mem, gpus = index.dyn[o]
        amount = _gpu_amount(gpus, request)
        if amount > best_amount:
            best_amount, best_id = amount, node_id
        gpu_fits = dyn_fits((1 << 62, 1 << 62, gpus), request)
        gpu_ok_somewhere |= gpu_fits
        if not gpu_fits:
            blocked["node(s) without enough free GPU"] += 1
        elif cpu < request.cpu_milli:
            blocked["node(s) without enough free CPU"] += 1
        elif mem < request.memory_mib:
            blocked["node(s) without enough free memory"] += 1
    kind = f" of type {'|'.join(request.gpu_types)}" if request.gpu_types else ""
    if best_id is None:
        head = f"no node can run {request.describe()}"
    elif not request.wants_gpu or gpu_ok_somewhere:
        head = (
            f"no node has {request.cpu_milli / MILLI:g} CPUs and "
            f"{request.memory_mib / 1024:g} GiB of memory free"
            + (f" beside the {_gpu_phrase(request)}{kind}" if request.wants_gpu else "")
        )
    elif request.gpu_count:
        head = (
            f"no node has {request.gpu_count} free GPU{'s' if request.gpu_count > 1 else ''}{kind} "
            f"(best: {best_id} with {best_amount})"
        )
    else:
        head = (
            f"no node has a GPU{kind} with {request.gpu_milli / MILLI:g} of its capacity free "
            f"(best: {best_id} with {best_amount / MILLI:g})"
        )
    details = [f"{n} {why}" for why, n in sorted((skipped + blocked).items())]
    reason = head + (f" ({'; '.join(details)})" if details else "")
    if best_id is not None or back_later:
        return Unschedulable(reason)
    code = next((c for why, c in _NEVER_CODES if skipped[why]),
                ReasonCode.WAITING_FOR_CAPACITY)
    return Unschedulable(reason, code=code, never_fits=True)


def _gpu_phrase(request: ResourceRequest) -> str:
    if request.gpu_count:
        return f"{request.gpu_count} GPU{'s' if request.gpu_count > 1 else ''}"
    return f"{request.gpu_milli / MILLI:g} GPU"


def _static_miss(cls: NodeClass, request: ResourceRequest) -> str | None:
    """Why no node of ``cls`` can take ``request`` whatever room it has: its state, then
    its kind (:func:`_kind_miss`); ``None`` when one could."""
    if cls.status != "ready":
        return f"node(s) {cls.status.replace('_', ' ')}"
    return _kind_miss(cls, request)


def _kind_miss(cls: NodeClass, request: ResourceRequest) -> str | None:
    """Why no node of ``cls``, ready and empty, could take ``request`` (its GPUs or its
    labels); ``None`` when one could."""
    if request.wants_gpu:
        if cls.gpu_count == 0:
            return "node(s) without GPUs"
        if not request.allows_gpu_type(cls.gpu_type):
            return "node(s) with another GPU type"
        if cls.gpu_count < request.gpu_slots:
            return "node(s) with fewer GPUs in total"
    if request.selector:
        labels = cls.label_dict()
        if any(labels.get(k) != v for k, v in request.selector):
            return "node(s) without the selected labels"
    return None


def _gpu_amount(gpus: tuple[int, ...], request: ResourceRequest) -> int:
    """Whole free GPUs (for whole-GPU asks), largest free share (for a fraction), else 0."""
    if request.gpu_count:
        return sum(1 for g in gpus if g == MILLI)
    if request.gpu_milli:
        return gpus[0] if gpus else 0
    return 0


def _book(nodes: Sequence[NodeSnapshot], binding: Binding, sign: int) -> list[NodeSnapshot]:
    """``binding`` taken (``sign`` +1) or released (-1) on its node.

    A take needs room: every bound GPU listed, and nothing below zero afterwards. A
    release only needs to stay within capacity (``free <= total``): on a node that holds
    more than it has (see :class:`NodeSnapshot`) the free room may stay below zero, and
    GPU indices the node no longer lists have nothing to free.
    """
    out = list(nodes)
    for i, node in enumerate(out):
        if node.id != binding.node_id:
            continue
        by_index = {g.index: g for g in node.gpus}
        missing = [d for d in binding.gpu_indices if d not in by_index]
        if missing and sign > 0:
            raise ValueError(f"node {node.id} has no GPU index {missing[0]}")
        gpus = []
        for g in node.gpus:
            free = g.free_milli
            if g.index in binding.gpu_indices:
                free -= sign * binding.gpu_milli
                if not 0 <= free <= MILLI:
                    raise ValueError(f"GPU {g.index} of node {node.id} cannot take this change")
            gpus.append(GpuSlot(g.index, g.type, g.memory_mib, free))
        cpu = node.cpu_milli_free - sign * binding.cpu_milli
        mem = node.memory_mib_free - sign * binding.memory_mib
        if sign > 0:
            fits = cpu >= 0 and mem >= 0
        else:
            fits = cpu <= node.cpu_milli_total and mem <= node.memory_mib_total
        if not fits:
            raise ValueError(f"node {node.id} cannot take this change of CPU or memory")
        out[i] = replace(
            node, cpu_milli_free=cpu, memory_mib_free=mem, gpus=gpus, labels=dict(node.labels)
        )
        return out
    raise ValueError(f"unknown node {binding.node_id!r}")


def apply_binding(nodes: Sequence[NodeSnapshot], binding: Binding) -> list[NodeSnapshot]:
    """A new snapshot list where ``binding``'s resources are taken; the inputs stay unchanged.

    Only the bound node is copied; the other entries are the same objects as in ``nodes``.

    Raises:
        ValueError: unknown node or GPU index, or not enough free room.
    """
    return _book(nodes, binding, +1)


def release_binding(nodes: Sequence[NodeSnapshot], binding: Binding) -> list[NodeSnapshot]:
    """A new snapshot list where ``binding``'s resources are free again (inputs unchanged).

    Raises:
        ValueError: unknown node or GPU index, or a release beyond the node's capacity.
    """
    return _book(nodes, binding, -1)
