"""Placement policies: filter -> score -> bind over a :class:`ClusterIndex`.

Every policy scores groups of alike nodes (see ``index.py``), keeps the best score, breaks
ties either by the lowest node ordinal (inventory order) or uniformly at random over the tied
*nodes* (a seeded generator), and then picks the GPUs on the chosen node. The FGD paper's
simulator breaks ties by node order too (its nodes are renamed in a seeded random order, and
the first of the best-scored nodes wins), which the packing replay reproduces by permuting
the inventory with the seed.

A policy whose score depends only on (node class, node state, request) and whose ties go
to the first node keeps one :class:`Ranking` per distinct request for the index it last
worked on, so repeated placements on one :class:`ClusterIndex` rescore only the groups
that changed since (the answer is the same as a full scan's).

Policies:

``first-fit``
    The first node, in inventory order, with room; the lowest-numbered GPUs that fit.
``best-fit``
    The "BestFit" baseline of the FGD paper's simulator (``best_fit_score.go``): prefer
    the node whose free CPU and free GPU after placement, each normalised by the largest
    node (128 cores, 8 GPUs) and weighted 1/2, is smallest; integer scores 0..100; ties to
    the first node; a fractional task goes on the fullest GPU that fits.
``random``
    A uniformly random node with room; a random GPU that fits.
``fgd``
    Fragmentation gradient descent (Weng et al., ATC'23), re-implemented from the paper
    and its released simulator (``fgd_score.go``): the score of a node is
    ``int(100 * sigmoid((F_before - F_after) / 1000))`` where ``F`` is the node's
    fragmentation against the target workload (``frag.py``); ties to the first node; a
    fractional task goes on the GPU with the best score (the lowest index among equals).
``fgd-pack`` (ours, the default)
    See ``README.md`` beside this file: FGD's fragmentation gradient plus the change of the
    node's CPU deficit (free GPUs its free CPU cannot serve), on FGD's scale; then packing
    tie-breaks that keep empty nodes and empty GPUs whole.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from typing import Any

from neocloud.server.scheduler.frag import (
    DEFAULT_WORKLOAD,
    CompiledWorkload,
    Workload,
    node_frag,
)
from neocloud.server.scheduler.index import ClusterIndex, DynKey, NodeClass, dyn_fits
from neocloud.server.scheduler.types import MILLI, ResourceRequest

Choice = tuple[int, tuple[int, ...]]
"""A placement decision: (node ordinal, GPU positions on that node)."""


def first_whole_gpus(free: list[int], count: int) -> tuple[int, ...]:
    """The first ``count`` GPU positions that are entirely free (lowest positions first)."""
    out = []
    for pos, f in enumerate(free):
        if f == MILLI:
            out.append(pos)
            if len(out) == count:
                break
    return tuple(out)


class Policy:
    """Base class: subclasses define :meth:`score` and :meth:`pick_share`.

    Args:
        workload: target workload for fragmentation-aware policies (others ignore it).
        seed: seed of the tie-breaking random generator.
    """

    name = "base"
    tie_break = "random"
    """``"random"``: uniform over tied nodes; ``"first"``: the lowest node ordinal."""

    def __init__(self, workload: Workload | None = None, seed: int = 0) -> None:
        self.workload = workload or DEFAULT_WORKLOAD
        self.rng = random.Random(seed)
        self._ranked_index: ClusterIndex | None = None
        self._rankings: dict[ResourceRequest, Ranking] = {}

    # -- to override -------------------------------------------------------------------
    def score(self, cls: NodeClass, dyn: DynKey, request: ResourceRequest) -> tuple[Any, Any]:
        """``(score, aux)`` of a node in state ``dyn``; higher scores win.

        ``aux`` is handed to :meth:`pick_share` for the chosen node.
        """
        return 0, None

    def pick_share(self, free: list[int], request: ResourceRequest, aux: Any) -> int:
        """GPU position for a fractional request on the chosen node (default: first fit)."""
        share = request.gpu_milli
        for pos, f in enumerate(free):
            if f >= share:
                return pos
        raise AssertionError("chosen node has no GPU with room")  # pragma: no cover

    # -- driver ------------------------------------------------------------------------
    static_scores = True
    """True when :meth:`score` depends only on the node class, its state and the request;
    with ``tie_break == "first"`` this lets :meth:`select` keep rankings between calls."""

    def select(self, index: ClusterIndex, request: ResourceRequest) -> Choice | None:
        """Choose a node and GPUs for ``request``; ``None`` when no node has room."""
        if self.tie_break == "first" and self.static_scores:
            found = self._select_ranked(index, request)
        else:
            found = self._select_scan(index, request)
        if found is None:
            return None
        ordinal, aux = found
        return ordinal, self.pick_slots(index.gpu_free[ordinal], request, aux)

    def _select_scan(self, index: ClusterIndex, request: ResourceRequest) -> tuple[int, Any] | None:
        """Score every feasible group now; the best node and its ``aux``."""
        best: Any = None
        ties: list[tuple[list[int], Any]] = []
        classes = index.classes
        score = self.score
        for cid, dyn, members in index.feasible_groups(request):
            s, aux = score(classes[cid], dyn, request)
            if best is None or s > best:
                best = s
                ties = [(members, aux)]
            elif s == best:
                ties.append((members, aux))
        if not ties:
            return None
        return self._break_tie(ties)

    def _select_ranked(
        self, index: ClusterIndex, request: ResourceRequest
    ) -> tuple[int, Any] | None:
        """The best node through a ranking kept per distinct request (see :class:`Ranking`)."""
        if index is not self._ranked_index:
            self._ranked_index = index
            self._rankings = {}
        ranking = self._rankings.get(request)
        if ranking is None:
            ranking = self._rankings[request] = Ranking(self, index, request)
        return ranking.best()

    def _break_tie(self, ties: list[tuple[list[int], Any]]) -> tuple[int, Any]:
        """The chosen node ordinal among tied groups, with its group's ``aux``."""
        if self.tie_break == "first":
            members, aux = min(ties, key=lambda t: t[0][0]) if len(ties) > 1 else ties[0]
            return members[0], aux
        total = sum(len(m) for m, _ in ties)
        r = self.rng.randrange(total)
        for members, aux in ties:
            if r < len(members):
                return members[r], aux
            r -= len(members)
        raise AssertionError("unreachable")  # pragma: no cover

    def pick_slots(self, free: list[int], request: ResourceRequest, aux: Any) -> tuple[int, ...]:
        """GPU positions for ``request`` on the chosen node."""
        if request.gpu_count:
            return first_whole_gpus(free, request.gpu_count)
        if request.gpu_milli:
            return (self.pick_share(free, request, aux),)
        return ()


def _negate(score: Any) -> Any:
    """A key that sorts ascending where ``score`` sorts descending (numbers or tuples)."""
    if isinstance(score, tuple):
        return tuple(-x for x in score)
    return -score


_UNSEEN = object()


class Ranking:
    """The feasible groups of an index ranked for one request, kept up to date lazily.

    A policy with static scores gives a group (class, state) the same score for the same
    request every time, so the score is computed once per group id and cached. A min-heap
    holds ``(negated score, first member ordinal, group id)``; :meth:`best` first replays
    the index's change log since its last call (pushing a fresh entry for each changed group
    that still has members and room), then drops heap tops whose group is empty or whose
    first member changed. The top is then the best score with the lowest node ordinal among
    equals, exactly what a full scan with ties to the first node returns. Cost per call:
    the changes since the previous call for this request, not the number of groups.
    """

    __slots__ = ("policy", "index", "request", "admitting", "n_classes", "scores", "heap", "pos")

    def __init__(self, policy: Policy, index: ClusterIndex, request: ResourceRequest) -> None:
        self.policy = policy
        self.index = index
        self.request = request
        self.scores: dict[int, tuple[Any, Any] | None] = {}
        self.admitting: frozenset[int] = frozenset()
        self.n_classes = -1
        self.heap: list[tuple[Any, int, int]] = []
        self.pos = 0

    def _score(self, gid: int) -> tuple[Any, Any] | None:
        index = self.index
        cid = index.group_class[gid]
        dyn = index.group_dyn[gid]
        if cid not in self.admitting or not dyn_fits(dyn, self.request):
            return None
        s, aux = self.policy.score(index.classes[cid], dyn, self.request)
        return _negate(s), aux

    def _rebuild(self) -> None:
        index = self.index
        if self.n_classes != len(index.classes):
            self.n_classes = len(index.classes)
            self.admitting = frozenset(index.admitting_classes(self.request))
            self.scores = {}
        heap = []
        scores = self.scores
        ids = index.group_ids
        for cid in self.admitting:
            for dyn, members in index.groups[cid].items():
                gid = ids[(cid, dyn)]
                sc = scores.get(gid, _UNSEEN)
                if sc is _UNSEEN:
                    sc = scores[gid] = self._score(gid)
                if sc is not None:
                    heap.append((sc[0], members[0], gid))
        heapq.heapify(heap)
        self.heap = heap
        self.pos = len(index.changes)

    def best(self) -> tuple[int, Any] | None:
        """``(node ordinal, aux)`` of the best node with room, or ``None``."""
        index = self.index
        changes = index.changes
        pending = len(changes) - self.pos
        if (
            self.n_classes != len(index.classes)
            or pending > index.live_groups
            or len(self.heap) > 4 * index.live_groups + 64
        ):
            self._rebuild()
        elif pending:
            heap = self.heap
            scores = self.scores
            members_of = index.group_members
            push = heapq.heappush
            for gid in set(changes[self.pos :]):
                members = members_of[gid]
                if not members:
                    continue
                sc = scores.get(gid, _UNSEEN)
                if sc is _UNSEEN:
                    sc = scores[gid] = self._score(gid)
                if sc is not None:
                    push(heap, (sc[0], members[0], gid))
            self.pos = len(changes)
        heap = self.heap
        members_of = index.group_members
        while heap:
            _, first, gid = heap[0]
            members = members_of[gid]
            if members and members[0] == first:
                sc = self.scores[gid]
                assert sc is not None
                return first, sc[1]
            heapq.heappop(heap)
        return None


class FirstFit(Policy):
    """The first node in inventory order with room; the first GPUs that fit."""

    name = "first-fit"
    tie_break = "first"


MAX_SPEC_CPU_MILLI = 128_000
MAX_SPEC_GPU_MILLI = 8_000
"""Normalisers of the FGD simulator's BestFit score (``MaxSpecCpu``, ``MaxSpecGpu`` in
``pkg/type/open-gpu-share/utils/const.go``): the largest openb node."""


class BestFit(Policy):
    """Least free CPU and GPU left after placement (the FGD paper's BestFit baseline)."""

    name = "best-fit"
    tie_break = "first"

    def score(self, cls: NodeClass, dyn: DynKey, request: ResourceRequest) -> tuple[Any, Any]:
        left = (dyn[0] - request.cpu_milli) / MAX_SPEC_CPU_MILLI * 0.5
        left += (sum(dyn[2]) - request.total_gpu_milli) / MAX_SPEC_GPU_MILLI * 0.5
        return int((1.0 - left) * 100), None

    def pick_share(self, free: list[int], request: ResourceRequest, aux: Any) -> int:
        share = request.gpu_milli
        best = -1
        for pos, f in enumerate(free):
            if f >= share and (best < 0 or f < free[best]):
                best = pos
        return best


class RandomFit(Policy):
    """A uniformly random node with room, and a random GPU on it that fits."""

    name = "random"

    static_scores = False

    def select(self, index: ClusterIndex, request: ResourceRequest) -> Choice | None:
        groups = [members for _, _, members in index.feasible_groups(request)]
        if not groups:
            return None
        ordinal, _ = self._break_tie([(m, None) for m in groups])
        return ordinal, self.pick_slots(index.gpu_free[ordinal], request, None)

    def pick_share(self, free: list[int], request: ResourceRequest, aux: Any) -> int:
        fits = [pos for pos, f in enumerate(free) if f >= request.gpu_milli]
        return fits[self.rng.randrange(len(fits))]


class _FragPolicy(Policy):
    """Shared machinery: cached node fragmentation and its change for one placement."""

    def __init__(self, workload: Workload | None = None, seed: int = 0) -> None:
        super().__init__(workload, seed)
        self._wl = self.workload.compiled()
        self._frag: dict[tuple[str, int, tuple[int, ...]], float] = {}

    def frag(self, gpu_type: str, cpu: int, gpus: tuple[int, ...]) -> float:
        """Node fragmentation (milli-GPU) of a state, cached."""
        key = (gpu_type, cpu, gpus)
        value = self._frag.get(key)
        if value is None:
            value = node_frag(gpu_type, cpu, gpus, self._wl)
            self._frag[key] = value
        return value

    def deltas(
        self, cls: NodeClass, dyn: DynKey, request: ResourceRequest
    ) -> list[tuple[float, int]]:
        """``(F_after - F_before, level)`` for each distinct way to place ``request``.

        ``level`` is the free milli-GPU of the GPU a fractional request would use (-1 for
        whole-GPU and CPU-only requests, which have one way up to GPU order).
        """
        cpu, _, gpus = dyn
        gtype = cls.gpu_type
        before = self.frag(gtype, cpu, gpus)
        after_cpu = cpu - request.cpu_milli
        if request.gpu_count:
            k = request.gpu_count
            after = gpus[k:] + (0,) * k
            return [(self.frag(gtype, after_cpu, tuple(sorted(after, reverse=True))) - before, -1)]
        share = request.gpu_milli
        if not share:
            return [(self.frag(gtype, after_cpu, gpus) - before, -1)]
        out = []
        seen = -1
        for i, g in enumerate(gpus):
            if g < share:
                break
            if g == seen:
                continue
            seen = g
            after = list(gpus)
            after[i] = g - share
            out.append(
                (self.frag(gtype, after_cpu, tuple(sorted(after, reverse=True))) - before, g)
            )
        return out


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class FGD(_FragPolicy):
    """Fragmentation gradient descent, faithful to the released simulator (see module doc)."""

    name = "fgd"
    tie_break = "first"

    def score(self, cls: NodeClass, dyn: DynKey, request: ResourceRequest) -> tuple[Any, Any]:
        best = -1
        levels: list[int] = []
        for delta, level in self.deltas(cls, dyn, request):
            s = int(_sigmoid(-delta / 1000.0) * 100)
            if s > best:
                best = s
                levels = [level]
            elif s == best:
                levels.append(level)
        return best, levels

    def pick_share(self, free: list[int], request: ResourceRequest, aux: Any) -> int:
        share = request.gpu_milli
        for pos, f in enumerate(free):
            if f >= share and f in aux:
                return pos
        raise AssertionError("no GPU at the chosen level")  # pragma: no cover


def cpu_per_gpu_milli(workload: CompiledWorkload) -> float:
    """CPU the GPU classes of a workload ask per milli-GPU (millicores per milli-GPU).

    ``sum_m p_m * cpu_m / sum_m p_m * gpu_milli_m * gpu_count_m`` over the classes that use
    GPUs; 0.0 when there are none.
    """
    gpu = sum(p * milli * count for _, milli, count, _, p in workload.gpu_classes)
    if gpu <= 0:
        return 0.0
    return sum(p * cpu for cpu, _, _, _, p in workload.gpu_classes) / gpu


class FgdPack(_FragPolicy):
    """Ours: FGD's gradient plus a CPU-reserve penalty, then packing tie-breaks.

    See ``README.md`` beside this file. The change of fragmentation of a placement is
    ``F_after - F_before + R_after - R_before``, where ``R`` is the node's *CPU deficit*:
    the milli-GPU of its free GPUs that its free CPU cannot serve at the workload's CPU per
    GPU (:func:`cpu_per_gpu_milli`), ``max(0, free_gpu - free_cpu / cpu_per_gpu)``. The score,
    compared left to right, is that change on FGD's 0..100 sigmoid scale, then "the node is
    already in use", then for a fraction the fullest GPU that fits, for CPU-only work a node
    whose GPUs are all taken; remaining ties go to the first node in inventory order.
    """

    name = "fgd-pack"
    tie_break = "first"

    def __init__(self, workload: Workload | None = None, seed: int = 0) -> None:
        super().__init__(workload, seed)
        self.cpu_per_gpu = cpu_per_gpu_milli(self._wl)

    def cpu_deficit(self, cpu_free: int, gpu_free: int) -> float:
        """Milli-GPU of ``gpu_free`` that ``cpu_free`` millicores cannot serve (see class doc)."""
        if self.cpu_per_gpu <= 0:
            return 0.0
        return max(0.0, gpu_free - cpu_free / self.cpu_per_gpu)

    def score(self, cls: NodeClass, dyn: DynKey, request: ResourceRequest) -> tuple[Any, Any]:
        best: Any = None
        level = -1
        cpu = dyn[0]
        free_total = sum(dyn[2])
        in_use = 1 if free_total < cls.gpu_count * MILLI else 0
        reserve = self.cpu_deficit(
            cpu - request.cpu_milli, free_total - request.total_gpu_milli
        ) - self.cpu_deficit(cpu, free_total)
        # CPU-only work: prefer a node whose GPUs are all taken (its CPU has no other use)
        gpus_taken = 0 if request.wants_gpu or free_total else 1
        for delta, lvl in self.deltas(cls, dyn, request):
            key = (
                int(_sigmoid(-(delta + reserve) / 1000.0) * 100),
                in_use,
                -lvl if lvl >= 0 else gpus_taken,
            )
            if best is None or key > best:
                best = key
                level = lvl
        return best, level

    def pick_share(self, free: list[int], request: ResourceRequest, aux: Any) -> int:
        share = request.gpu_milli
        for pos, f in enumerate(free):
            if f >= share and f == aux:
                return pos
        raise AssertionError("no GPU at the chosen level")  # pragma: no cover


PolicyFactory = Callable[..., Policy]

POLICIES: dict[str, PolicyFactory] = {
    "first-fit": FirstFit,
    "best-fit": BestFit,
    "random": RandomFit,
    "fgd": FGD,
    "fgd-pack": FgdPack,
}
"""Placement policies by name; each is called as ``factory(workload=None, seed=0)``.
``"default"`` names our own policy."""
POLICIES["default"] = POLICIES["fgd-pack"]


def make_policy(name: str, *, workload: Workload | None = None, seed: int = 0) -> Policy:
    """A fresh policy instance by name.

    Raises:
        ValueError: for an unknown policy name (the message lists the known ones).
    """
    try:
        factory = POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown placement policy {name!r}; choose one of: {known}") from None
    return factory(workload=workload, seed=seed)
