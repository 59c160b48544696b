"""Events: what happened to a resource and why."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from neocloud.models.common import OutModel


class EventKind(StrEnum):
    """The kinds of resource events are stored under (the ``kind`` filter of ``GET
    /events`` takes one of these; any other is a 422 naming ``query.kind`` and listing
    them). Replicas' and job workers' status events are written under their deployment
    and job; ``replica`` stays a kind for the events stored under it; nodes' events
    belong to no workspace."""

    deployment = "deployment"
    replica = "replica"
    job = "job"
    pod = "pod"
    volume = "volume"
    secret = "secret"
    budget = "budget"
    node = "node"


class EventOut(OutModel):
    id: int
    kind: str
    """Resource kind, one of :class:`EventKind`."""
    name: str
    type: str
    """``normal`` or ``warning``."""
    reason: str
    """A CamelCase word such as ``Scheduled``, ``Unschedulable``, ``Ready``, ``Crashed``."""
    message: str
    created_at: datetime
