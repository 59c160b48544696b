"""Operator views: the invariant check of the control plane."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from neocloud.models.common import OutModel


class Invariant(StrEnum):
    """The promises the control plane keeps at every committed instant.

    See ``server/reconcilers/README.md`` for how each is kept.
    """

    allocation_owner = "allocation_owner"
    """Every allocation belongs to a workload that exists and holds resources now
    (a replica starting, ready, failed or stopping; a job worker starting, running or
    stopping; a pod starting, running or stopping)."""
    allocation_missing = "allocation_missing"
    """Every workload that runs or is starting holds an allocation (nothing runs uncounted):
    a replica starting or ready, a job worker or a pod starting or running."""
    quota = "quota"
    """What a workspace's allocations hold is within its quota (GPUs per type and in all,
    CPU, memory)."""
    node_capacity = "node_capacity"
    """What the allocations on a node hold fits the node: at most 1000 milli-GPU on each of
    its GPUs, and its CPU and memory."""
    not_wanted_running = "not_wanted_running"
    """No process runs for a workload that is stopped, finished or deleted, and no job
    that is finished has a worker that still holds a process or a node."""
    status_history = "status_history"
    """A workload's status is the one its newest status event names, and its status events
    follow the allowed transitions (nothing leaves a terminal state)."""


class Violation(OutModel):
    """One broken invariant on one object."""

    invariant: Invariant
    kind: str
    """What the object is: ``allocation``, ``replica``, ``job``, ``job_worker``, ``pod``,
    ``node``, ``workspace``, ``deployment`` or ``process``."""
    object_id: str
    workspace_id: str | None = None
    message: str


class CheckReport(OutModel):
    """What ``GET /api/v1/admin/check`` answers: every broken invariant (none: ``ok``)."""

    ok: bool
    checked_at: datetime
    counts: dict[str, int]
    """Objects read, by kind (``allocations``, ``replicas``, ``jobs``, ...)."""
    violations: list[Violation]
