"""Placement policies: filter -> score -> bind over a :class:`ClusterIndex`.

Every policy scores groups of alike nodes (see ``index.py``), keeps the best score, breaks
ties either by the lowest node ordinal (inventory order) or uniformly at random over the tied
*nodes* (a seeded generator), and then picks the GPUs on the chosen node. The FGD paper's
simulator breaks ties by node order too (its nodes are renamed in a seeded random order, and
the first of the best-scored nodes wins), which the packing replay reproduces by permuting
the inventory with the seed.

Policies:

``first-fit``
    The first node, in inventory order, with room; the lowest-numbered GPUs that fit.
``best-fit``
    The "BestFit" baseline of the FGD paper's simulator (``best_fit_score.go``): prefer
    the node whose free CPU and free GPU after placement, each normalised by the largest
    node (128 cores, 8 GPUs) and weighted 1/2, is smallest; integer scores 0..100; ties at
    random; a fractional task goes on the fullest GPU that fits.
``random``
    A uniformly random node with room; a random GPU that fits.
``fgd``
    Fragmentation gradient descent (Weng et al., ATC'23), re-implemented from the paper
    and its released simulator (``fgd_score.go``): the score of a node is
    ``int(100 * sigmoid((F_before - F_after) / 1000))`` where ``F`` is the node's
    fragmentation against the target workload (``frag.py``); ties to the first node; a
    fractional task goes on the GPU with the best score (the lowest index among equals).
``fgd-pack`` (ours, the default)
    See ``README.md`` beside this file: FGD's fragmentation score, then packing tie-breaks
    that keep empty nodes and empty GPUs whole.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from neocloud.server.scheduler.frag import DEFAULT_WORKLOAD, Workload, node_frag
from neocloud.server.scheduler.index import ClusterIndex, DynKey, NodeClass
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
    def select(self, index: ClusterIndex, request: ResourceRequest) -> Choice | None:
        """Choose a node and GPUs for ``request``; ``None`` when no node has room."""
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
        ordinal, aux = self._break_tie(ties)
        return ordinal, self.pick_slots(index.gpu_free[ordinal], request, aux)

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


class FgdPack(_FragPolicy):
    """Ours: FGD's fragmentation score, then packing tie-breaks (see ``README.md``).

    Score, compared left to right: the fragmentation gradient on FGD's 0..100 scale (so
    differences below about 1/25 GPU count as equal), then "the node is already in use",
    then less free GPU capacity left on the node, then (for a fraction) the fullest GPU that
    fits; remaining ties go to the first node in inventory order.
    """

    name = "fgd-pack"
    tie_break = "first"

    def score(self, cls: NodeClass, dyn: DynKey, request: ResourceRequest) -> tuple[Any, Any]:
        best: Any = None
        level = -1
        gpus = dyn[2]
        free_total = sum(gpus)
        in_use = 1 if free_total < cls.gpu_count * MILLI else 0
        for delta, lvl in self.deltas(cls, dyn, request):
            key = (
                int(_sigmoid(-delta / 1000.0) * 100),
                in_use,
                -free_total,
                -lvl if lvl >= 0 else 0,
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
