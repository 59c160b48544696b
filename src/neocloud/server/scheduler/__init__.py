"""The scheduler: pure functions over an inventory snapshot (no I/O, no clock, no database).

Admission (:func:`check_quota`), placement (:func:`place`, :func:`place_gang` with the
policies in :data:`POLICIES`) and preemption (:func:`select_victims`). Units: CPU in
millicores, memory in MiB, GPU in milli-GPU (1000 = one GPU). See ``README.md`` beside this
file for the placement policy and its sources.
"""

from __future__ import annotations

from neocloud.server.scheduler.admission import Quota, Usage, check_quota, narrow_to_quota
from neocloud.server.scheduler.frag import (
    DEFAULT_WORKLOAD,
    WorkClass,
    Workload,
    node_frag,
    workload_from_requests,
)
from neocloud.server.scheduler.index import ClusterIndex
from neocloud.server.scheduler.placement import (
    apply_binding,
    explain,
    place,
    place_gang,
    place_on,
    release_binding,
)
from neocloud.server.scheduler.policies import POLICIES, Policy, make_policy
from neocloud.server.scheduler.preemption import RunningWork, select_victims
from neocloud.server.scheduler.types import (
    MILLI,
    NODE_STATUSES,
    Binding,
    GpuSlot,
    NodeSnapshot,
    ResourceRequest,
    Unschedulable,
)

__all__ = [
    "DEFAULT_WORKLOAD",
    "MILLI",
    "NODE_STATUSES",
    "POLICIES",
    "Binding",
    "ClusterIndex",
    "GpuSlot",
    "NodeSnapshot",
    "Policy",
    "Quota",
    "ResourceRequest",
    "RunningWork",
    "Unschedulable",
    "Usage",
    "WorkClass",
    "Workload",
    "apply_binding",
    "check_quota",
    "explain",
    "make_policy",
    "narrow_to_quota",
    "node_frag",
    "place",
    "place_gang",
    "place_on",
    "release_binding",
    "select_victims",
    "workload_from_requests",
]
