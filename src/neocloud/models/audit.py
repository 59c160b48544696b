"""The audit log: who did what to which resource, and every denied attempt."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from neocloud.models.common import OutModel


class AuditOutcome(StrEnum):
    """How an audited call ended: ``success`` (2xx/3xx), ``denied`` (401, 403, or a 404 on
    a resource of another workspace) or ``failed`` (any other error)."""

    success = "success"
    denied = "denied"
    failed = "failed"


class AuditEntryOut(OutModel):
    """One audited API call.

    ``workspace`` and ``token_name`` are the caller's (``None`` when no valid token was
    sent); ``target_workspace`` is set when the resource belongs to another workspace;
    ``action`` is the API operation (``delete_job``, or ``METHOD /path`` for a path or
    method the API does not serve); ``target`` is the path under ``/api/v1``
    (``jobs/train``); ``status`` the HTTP status answered and ``code`` the error's
    machine-readable code, if any.
    """

    id: int
    at: datetime
    workspace: str | None
    token_name: str | None
    target_workspace: str | None
    method: str
    action: str
    target: str
    outcome: AuditOutcome
    status: int
    code: str | None
