"""Plain data the scheduler works on: an inventory snapshot, a request, and its answer.

Units everywhere: CPU in millicores (1000 = one core), memory in MiB, GPU capacity in
milli-GPU (1000 = one whole GPU). Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from neocloud.errors import ValidationFailed
from neocloud.models.deployments import ReasonCode

MILLI = 1000
"""Milli-units in one whole GPU (and in one CPU core)."""

NODE_STATUSES = ("ready", "not_ready", "cordoned", "draining")
"""Node states; only ``ready`` nodes take new work."""


@dataclass
class GpuSlot:
    """One GPU of a node.

    Attributes:
        index: device index on the node (0-based, as in ``CUDA_VISIBLE_DEVICES``).
        type: model name, e.g. ``"A100"``; compared verbatim with request GPU types.
        memory_mib: device memory in MiB (0 when unknown).
        free_milli: free share of this GPU, 0..1000.
    """

    index: int
    type: str
    memory_mib: int
    free_milli: int = MILLI


@dataclass
class NodeSnapshot:
    """One node as the scheduler sees it at one moment.

    Attributes:
        id: unique node id.
        cpu_milli_total / cpu_milli_free: CPU capacity and what is unallocated (millicores).
        memory_mib_total / memory_mib_free: memory capacity and what is unallocated (MiB).
        gpus: the node's GPUs with their free shares.
        labels: node labels matched by ``ResourceRequest.node_selector``.
        pool: node pool name, if any (also exposed as the label ``pool`` when selecting).
        status: one of :data:`NODE_STATUSES`; only ``"ready"`` takes new work.

    A node can hold more than it has: one that joins again smaller (a server restarted
    with less memory, fewer GPUs) keeps the work it runs. Its ``cpu_milli_free`` or
    ``memory_mib_free`` is then below zero, and allocations may name GPU indices it no
    longer lists. Such a node takes no new work there until enough is released; the
    invariant kept is ``free <= total``, and ``free >= 0`` after every booking.
    """

    id: str
    cpu_milli_total: int
    cpu_milli_free: int
    memory_mib_total: int
    memory_mib_free: int
    gpus: list[GpuSlot] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    pool: str | None = None
    status: str = "ready"

    @property
    def gpu_type(self) -> str:
        """The GPU model of this node ("" for a CPU-only node; nodes hold one GPU model)."""
        return self.gpus[0].type if self.gpus else ""


def _freeze_selector(selector: object) -> tuple[tuple[str, str], ...]:
    if isinstance(selector, Mapping):
        pairs = selector.items()
    else:
        pairs = selector  # type: ignore[assignment]
    out = tuple(sorted((str(k), str(v)) for k, v in pairs))  # type: ignore[misc]
    return out


@dataclass(frozen=True)
class ResourceRequest:
    """What one workload (a replica, a job worker, a pod) asks for.

    Attributes:
        cpu_milli: CPU in millicores.
        memory_mib: memory in MiB.
        gpu_count: whole GPUs (all on one node).
        gpu_milli: a fractional share of ONE GPU (1..999) when ``gpu_count == 0``; else 0.
        gpu_types: allowed GPU models; empty means any model.
        node_selector: labels the node must carry; given as a mapping or pairs and stored
            as a sorted tuple of ``(key, value)`` pairs so the request stays hashable.
        gpu_types_excluded: GPU models the request may not use even when ``gpu_types``
            allows them (e.g. those a workspace quota has no room left in); see
            :meth:`allows_gpu_type`.

    Raises:
        ValidationFailed: on negative amounts, a fraction outside 1..999, or a fraction
            combined with whole GPUs.
    """

    cpu_milli: int
    memory_mib: int
    gpu_count: int = 0
    gpu_milli: int = 0
    gpu_types: tuple[str, ...] = ()
    node_selector: Mapping[str, str] | tuple[tuple[str, str], ...] = ()
    gpu_types_excluded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu_types", tuple(self.gpu_types))
        object.__setattr__(self, "gpu_types_excluded", tuple(sorted(set(self.gpu_types_excluded))))
        object.__setattr__(self, "node_selector", _freeze_selector(self.node_selector))
        if self.cpu_milli < 0:
            raise ValidationFailed("cpu_milli must be >= 0", param="cpu_milli")
        if self.memory_mib < 0:
            raise ValidationFailed("memory_mib must be >= 0", param="memory_mib")
        if self.gpu_count < 0:
            raise ValidationFailed("gpu_count must be >= 0", param="gpu_count")
        if self.gpu_milli and self.gpu_count:
            raise ValidationFailed(
                "ask for whole GPUs (gpu_count) or a share of one GPU (gpu_milli), not both",
                param="gpu_milli",
            )
        if not 0 <= self.gpu_milli < MILLI:
            raise ValidationFailed("gpu_milli must be between 1 and 999", param="gpu_milli")

    @property
    def selector(self) -> tuple[tuple[str, str], ...]:
        """The node selector as sorted ``(key, value)`` pairs."""
        return self.node_selector  # type: ignore[return-value]

    def allows_gpu_type(self, gpu_type: str) -> bool:
        """Whether GPUs of model ``gpu_type`` may take the request: listed in
        ``gpu_types`` (or that is empty), and not in ``gpu_types_excluded``."""
        return ((not self.gpu_types or gpu_type in self.gpu_types)
                and gpu_type not in self.gpu_types_excluded)

    @property
    def wants_gpu(self) -> bool:
        """True when the request needs any GPU capacity."""
        return self.gpu_count > 0 or self.gpu_milli > 0

    @property
    def per_gpu_milli(self) -> int:
        """Milli-GPU taken on each GPU used: 1000 for whole GPUs, the share otherwise."""
        return MILLI if self.gpu_count else self.gpu_milli

    @property
    def gpu_slots(self) -> int:
        """How many GPUs the request touches (1 for a fraction)."""
        return self.gpu_count if self.gpu_count else (1 if self.gpu_milli else 0)

    @property
    def total_gpu_milli(self) -> int:
        """All the GPU capacity asked for, in milli-GPU."""
        return self.gpu_count * MILLI if self.gpu_count else self.gpu_milli

    def describe(self) -> str:
        """Short human text, e.g. ``"4 A100 GPUs, 8 CPUs, 64 GiB"``."""
        kind = "|".join(self.gpu_types)
        if not kind and self.gpu_types_excluded:
            kind = f"non-{'|'.join(self.gpu_types_excluded)}"
        kind = f" {kind}" if kind else ""
        if self.gpu_count:
            gpu = f"{self.gpu_count}{kind} GPU{'s' if self.gpu_count > 1 else ''}, "
        elif self.gpu_milli:
            gpu = f"{self.gpu_milli / MILLI:g} of a{kind} GPU, "
        else:
            gpu = ""
        return f"{gpu}{self.cpu_milli / MILLI:g} CPUs, {self.memory_mib / 1024:g} GiB"


@dataclass(frozen=True)
class Binding:
    """Where one request was placed.

    Attributes:
        node_id: the chosen node.
        gpu_indices: device indices used on that node (empty for CPU-only work).
        gpu_milli: milli-GPU taken on EACH listed GPU (1000 for whole GPUs).
        cpu_milli / memory_mib: CPU (millicores) and memory (MiB) taken on that node.
    """

    node_id: str
    gpu_indices: tuple[int, ...]
    gpu_milli: int
    cpu_milli: int
    memory_mib: int

    @property
    def total_gpu_milli(self) -> int:
        """All GPU capacity this binding holds, in milli-GPU."""
        return self.gpu_milli * len(self.gpu_indices)


@dataclass(frozen=True)
class Unschedulable:
    """Why a request cannot be placed now.

    Attributes:
        reason: a sentence shown to users as the pending reason (may change).
        code: its stable code, for programs (``pending_code``, ``deploy --dry-run``).
        never_fits: no registered node could take the request even when empty and
            ready (its GPU type, GPU count or labels rule every node out), as opposed to
            a lack of free room now or nodes that are cordoned, draining or not ready.
    """

    reason: str
    code: ReasonCode = ReasonCode.WAITING_FOR_CAPACITY
    never_fits: bool = False

    def __str__(self) -> str:
        return self.reason
