"""Events: what happened to a resource and why."""

from __future__ import annotations

from datetime import datetime

from neocloud.models.common import OutModel


class EventOut(OutModel):
    id: int
    kind: str
    """Resource kind: ``deployment``, ``replica``, ``node``, ``job``, ``pod``."""
    name: str
    type: str
    """``normal`` or ``warning``."""
    reason: str
    """A CamelCase word such as ``Scheduled``, ``Unschedulable``, ``Ready``, ``Crashed``."""
    message: str
    created_at: datetime
