"""``client.audit``: who changed what, and every denied attempt."""

from __future__ import annotations

from datetime import datetime

from neocloud.models.audit import AuditEntryOut
from neocloud.sdk._http import HttpApi

AuditList = list[AuditEntryOut]


class Audit:
    """The audit log. An admin token reads its workspace's entries (its own calls and the
    attempts on its resources); an operator token reads every entry."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def list(self, *, since: datetime | None = None, limit: int | None = None) -> AuditList:
        """Entries at or after ``since`` (timezone-aware, or UTC when naive), oldest first;
        at most ``limit`` (the newest ones; the server's default is 100, its most 1000).

        Raises:
            PermissionDenied: the token is not an admin token.
            ValidationFailed: ``limit`` out of range.
        """
        params = {"since": since.isoformat() if since else None, "limit": limit}
        return self._api.get_list(AuditEntryOut, "/audit", params=params)
