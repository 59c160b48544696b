"""Workspace quotas: does one more request fit under a quota, and if not, why.

The check is pure; the control plane must make "check, then record the usage" atomic
(for example inside one database transaction holding the workspace row lock) so parallel
requests cannot both pass against the same headroom.

GPU amounts are counted in milli-GPU so fractional requests use fractions of the quota.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from neocloud.server.scheduler.types import MILLI, Binding, ResourceRequest

ANY_TYPE = "*"
"""Key of :attr:`Quota.gpus_by_type` that limits each GPU type not listed by name."""


@dataclass(frozen=True)
class Quota:
    """Limits of one workspace; ``None`` means unlimited.

    Attributes:
        gpus_by_type: GPUs in use per GPU type (``"*"`` applies to each type not listed).
        gpus_total: GPUs in use over all types.
        cpu_milli: CPU in use (millicores).
        memory_mib: memory in use (MiB).
    """

    gpus_by_type: Mapping[str, int] = field(default_factory=dict)
    gpus_total: int | None = None
    cpu_milli: int | None = None
    memory_mib: int | None = None

    def gpu_limit_milli(self, gpu_type: str) -> int | None:
        """The per-type limit of ``gpu_type`` in milli-GPU (None = no per-type limit)."""
        limit = self.gpus_by_type.get(gpu_type, self.gpus_by_type.get(ANY_TYPE))
        return None if limit is None else int(limit) * MILLI


@dataclass(frozen=True)
class Usage:
    """What a workspace holds now.

    Attributes:
        gpu_milli_by_type: milli-GPU in use per GPU type.
        cpu_milli: CPU in use (millicores).
        memory_mib: memory in use (MiB).
    """

    gpu_milli_by_type: Mapping[str, int] = field(default_factory=dict)
    cpu_milli: int = 0
    memory_mib: int = 0

    @property
    def gpu_milli_total(self) -> int:
        """All GPU capacity in use, in milli-GPU."""
        return sum(self.gpu_milli_by_type.values())

    @classmethod
    def from_bindings(cls, bindings: Iterable[Binding], gpu_type_of: Mapping[str, str]) -> Usage:
        """Sum bindings; ``gpu_type_of`` maps node id -> GPU type of that node."""
        by_type: dict[str, int] = {}
        cpu = mem = 0
        for b in bindings:
            cpu += b.cpu_milli
            mem += b.memory_mib
            if b.gpu_indices:
                t = gpu_type_of.get(b.node_id, "")
                by_type[t] = by_type.get(t, 0) + b.total_gpu_milli
        return cls(by_type, cpu, mem)


def _gpus(milli: int) -> str:
    return f"{milli / MILLI:g}"


def narrow_to_quota(
    quota: Quota, in_use: Usage, request: ResourceRequest, count: int = 1
) -> ResourceRequest | None:
    """``request`` restricted to the GPU models that ``count`` more copies of it may use
    without breaking a per-type limit, or ``None`` when no model may.

    A request that names models keeps those that fit (``gpu_types``). A request that takes
    any model may use every model but those at their limit: each model the quota names,
    and each other model in use, whose limit (its own, else ``"*"``) has no room left are
    excluded (``gpu_types_excluded``); models neither named nor limited by ``"*"`` are
    unlimited. When the ask exceeds the ``"*"`` limit itself, no model that quota does not
    name may take it: it keeps the named models that fit. The request comes back
    unchanged when per-type limits do not narrow it.
    """
    need = request.total_gpu_milli * count
    if not need or not quota.gpus_by_type:
        return request

    def fits(gpu_type: str) -> bool:
        limit = quota.gpu_limit_milli(gpu_type)
        return limit is None or in_use.gpu_milli_by_type.get(gpu_type, 0) + need <= limit

    named = [t for t in quota.gpus_by_type if t != ANY_TYPE]
    star = quota.gpus_by_type.get(ANY_TYPE)
    if request.gpu_types or (star is not None and need > int(star) * MILLI):
        ok = tuple(t for t in (request.gpu_types or named)
                   if fits(t) and request.allows_gpu_type(t))
        return replace(request, gpu_types=ok) if ok else None
    full = {t for t in (*named, *in_use.gpu_milli_by_type) if not fits(t)}
    if full <= set(request.gpu_types_excluded):
        return request
    return replace(request, gpu_types_excluded=(*request.gpu_types_excluded, *full))


def check_quota(
    quota: Quota, in_use: Usage, request: ResourceRequest, count: int = 1
) -> str | None:
    """Whether ``count`` more copies of ``request`` fit under ``quota``.

    Returns:
        ``None`` when they fit; otherwise the reason, e.g. ``"quota: 8/8 h100 GPUs in use
        (1 more requested)"``.
    """
    cpu = request.cpu_milli * count
    if quota.cpu_milli is not None and in_use.cpu_milli + cpu > quota.cpu_milli:
        return (
            f"quota: {in_use.cpu_milli / MILLI:g}/{quota.cpu_milli / MILLI:g} CPUs in use "
            f"({cpu / MILLI:g} more requested)"
        )
    mem = request.memory_mib * count
    if quota.memory_mib is not None and in_use.memory_mib + mem > quota.memory_mib:
        return (
            f"quota: {in_use.memory_mib / 1024:g}/{quota.memory_mib / 1024:g} GiB of memory in use "
            f"({mem / 1024:g} GiB more requested)"
        )
    need = request.total_gpu_milli * count
    if not need:
        return None
    if quota.gpus_total is not None and in_use.gpu_milli_total + need > quota.gpus_total * MILLI:
        return (
            f"quota: {_gpus(in_use.gpu_milli_total)}/{quota.gpus_total} GPUs in use "
            f"({_gpus(need)} more requested)"
        )
    if narrow_to_quota(quota, in_use, request, count) is not None:
        return None
    parts = []
    for t in request.gpu_types or tuple(quota.gpus_by_type):
        limit = quota.gpu_limit_milli(t)
        used = 0 if t == ANY_TYPE else in_use.gpu_milli_by_type.get(t, 0)
        name = "other-type" if t == ANY_TYPE else t
        parts.append(f"{_gpus(used)}/{_gpus(limit or 0)} {name} GPUs in use")
    return f"quota: {', '.join(parts)} ({_gpus(need)} more requested)"
