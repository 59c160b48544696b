"""GPU fragmentation of a node measured against a target workload.

The measure is the one of Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing
Workloads with Fragmentation Gradient Descent", USENIX ATC 2023 (section 4), as released
in their simulator (hkust-adsl/kubernetes-scheduler-simulator, ``pkg/utils/frag.go``):

* a *target workload* is a list of task classes ``m`` with popularity ``p_m`` (summing to 1);
* for one class, the fragment of a node is all its free GPU capacity when the class cannot
  run there at all (GPU model not allowed, too little CPU, too few GPUs with enough free
  capacity, or a CPU-only class), and otherwise the free capacity of the GPUs that are each
  too small for the class;
* the node's fragmentation is the popularity-weighted sum over classes, in milli-GPU.

Memory is not part of the measure (as in the paper).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from neocloud.server.scheduler.types import MILLI, ResourceRequest


@dataclass(frozen=True)
class WorkClass:
    """One class of task in a target workload.

    Attributes:
        cpu_milli: CPU per task (millicores).
        gpu_milli: milli-GPU needed on each GPU used (0 for CPU-only work, 1000 for whole GPUs).
        gpu_count: number of GPUs used (1 for a fractional task, 0 for CPU-only work).
        gpu_types: allowed GPU models (empty = any).
    """

    cpu_milli: int
    gpu_milli: int
    gpu_count: int
    gpu_types: tuple[str, ...] = ()

    @classmethod
    def of(cls, request: ResourceRequest) -> WorkClass:
        """The class of one request (memory and node selector are not part of it)."""
        return cls(request.cpu_milli, request.per_gpu_milli, request.gpu_slots, request.gpu_types)


@dataclass(frozen=True)
class Workload:
    """A target workload: task classes with popularities that sum to 1.

    Build one with :func:`workload_from_requests`, or directly from ``(class, weight)`` pairs
    with :meth:`from_weights`.
    """

    classes: tuple[tuple[WorkClass, float], ...]

    @classmethod
    def from_weights(cls, pairs: Iterable[tuple[WorkClass, float]]) -> Workload:
        """Normalise positive weights to popularities.

        Raises:
            ValueError: when no class has a positive weight.
        """
        items = [(c, float(w)) for c, w in pairs if w > 0]
        total = sum(w for _, w in items)
        if total <= 0:
            raise ValueError("a workload needs at least one class with a positive weight")
        return cls(tuple((c, w / total) for c, w in items))

    def compiled(self) -> CompiledWorkload:
        """A form of this workload that :func:`node_frag` evaluates quickly (cached)."""
        cached = _COMPILED.get(self)
        if cached is None:
            cached = CompiledWorkload(self)
            _COMPILED[self] = cached
        return cached


_COMPILED: dict[Workload, CompiledWorkload] = {}


class CompiledWorkload:
    """Workload tables laid out for :func:`node_frag`.

    ``cpu_only_p``: popularity of CPU-only classes (their fragment is always all free GPU);
    ``gpu_classes``: ``(cpu_milli, gpu_milli, gpu_count, allowed_types or None, p)`` rows.
    """

    __slots__ = ("workload", "cpu_only_p", "gpu_classes", "thresholds")

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.cpu_only_p = sum(p for c, p in workload.classes if c.gpu_milli == 0)
        self.gpu_classes = tuple(
            (c.cpu_milli, c.gpu_milli, c.gpu_count, frozenset(c.gpu_types) or None, p)
            for c, p in workload.classes
            if c.gpu_milli > 0
        )
        self.thresholds = tuple(sorted({row[1] for row in self.gpu_classes}))


DEFAULT_WORKLOAD = Workload.from_weights(
    [
        (WorkClass(4000, 250, 1), 1.0),
        (WorkClass(8000, 500, 1), 1.0),
        (WorkClass(8000, MILLI, 1), 2.0),
        (WorkClass(16000, MILLI, 2), 1.0),
        (WorkClass(32000, MILLI, 4), 1.0),
        (WorkClass(64000, MILLI, 8), 1.0),
    ]
)
"""Workload assumed when the caller gives none: quarter and half GPUs, 1, 2, 4 and 8 whole
GPUs (whole single GPUs twice as common). A control plane should pass the mix it observes."""


def workload_from_requests(
    requests: Iterable[ResourceRequest], *, coverage: float = 0.95
) -> Workload:
    """The target workload of a request stream, as FGD's simulator derives "typical pods".

    Classes are counted, sorted by count (most common first; ties by larger CPU, GPU share,
    GPU count, type list), and the most common ones are kept until they cover ``coverage`` of
    all requests; their popularities are then renormalised (``GetTypicalPods`` with
    ``podPopularityThreshold=95``, ``podIncreaseStep=1``, CPU-only pods included, as in the
    released experiment scripts).

    Raises:
        ValueError: when ``requests`` is empty.
    """
    counts = Counter(WorkClass.of(r) for r in requests)
    if not counts:
        raise ValueError("cannot derive a workload from no requests")
    total = sum(counts.values())
    ordered = sorted(
        counts.items(),
        key=lambda kv: (kv[1], kv[0].cpu_milli, kv[0].gpu_milli, kv[0].gpu_count, kv[0].gpu_types),
        reverse=True,
    )
    kept: list[tuple[WorkClass, float]] = []
    cum = 0
    for cls, n in ordered:
        if cum >= coverage * total:
            break
        kept.append((cls, float(n)))
        cum += n
    return Workload.from_weights(kept)


def node_frag(
    gpu_type: str, cpu_free: int, gpus_free: Sequence[int], workload: CompiledWorkload
) -> float:
    """Expected fragmented GPU capacity of one node, in milli-GPU.

    Args:
        gpu_type: the node's GPU model.
        cpu_free: unallocated CPU of the node (millicores).
        gpus_free: free milli-GPU of each GPU (any order).
        workload: the target workload (``Workload.compiled()``).

    Returns:
        ``sum_m p_m * frag_m`` as defined in the module docstring; 0 for a node without free GPU.
    """
    total = sum(gpus_free)
    if total == 0:
        return 0.0
    frag = workload.cpu_only_p * total
    per_threshold: dict[int, tuple[int, int]] = {}
    for cpu_m, milli, count, types, p in workload.gpu_classes:
        if (types is not None and gpu_type not in types) or cpu_free < cpu_m:
            frag += p * total
            continue
        fit = per_threshold.get(milli)
        if fit is None:
            n_ok = 0
            small = 0
            for g in gpus_free:
                if g >= milli:
                    n_ok += 1
                else:
                    small += g
            fit = (n_ok, small)
            per_threshold[milli] = fit
        frag += p * (fit[1] if fit[0] >= count else total)
    return frag
