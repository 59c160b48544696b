"""``client.events`` and ``client.usage``: what happened, and what it cost."""

from __future__ import annotations

from neocloud.models import Bill, EventOut
from neocloud.sdk._http import HttpApi

EventList = list[EventOut]


class Events:
    """Events of the workspace's resources (scheduling, readiness, crashes, ...)."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def list(
        self, *, kind: str | None = None, name: str | None = None, limit: int | None = None
    ) -> EventList:
        """Events, oldest first, optionally of one resource ``kind`` (``deployment``,
        ``replica``, ``node``) and ``name``; at most ``limit`` (the newest ones)."""
        events = self._api.get_list(
            EventOut, "/events", params={"kind": kind, "name": name, "limit": limit}
        )
        return sorted(events, key=lambda e: e.id)


class Usage:
    """Metered usage of the workspace."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def bill(self) -> Bill:
        """The workspace's bill so far: one line per workload, seconds, GPU-seconds,
        tokens and cost in USD, plus ``replica_seconds`` and ``total_usd``."""
        return self._api.get_model(Bill, "/usage")
