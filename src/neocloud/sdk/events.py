"""``client.events``: what happened to the workspace's resources, and why."""

from __future__ import annotations

from neocloud.models import EventOut
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
