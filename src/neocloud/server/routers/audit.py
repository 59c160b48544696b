"""The audit log: admins read their workspace's entries; operators read every entry."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query
from pydantic import TypeAdapter, ValidationError

from neocloud.errors import ValidationFailed
from neocloud.models import Page
from neocloud.models.audit import AuditEntryOut
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.errors_http import error_responses
from neocloud.server.services import audit as svc

router = APIRouter(tags=["audit"])

#: An ISO 8601 date and time (``2026-12-01T09:00:00Z``; the zone may be left out: UTC).
#: Plain numbers, which pydantic would take as Unix times, are refused.
ISO_TIME = (r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
            r"([Zz]|[+-]\d{2}(:?\d{2})?)?$")
_TIME = TypeAdapter(datetime)


def _parse_time(value: str | None, *, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = _TIME.validate_python(value)
    except ValidationError:
        raise ValidationFailed(f"{param}: not an ISO 8601 time such as 2026-12-01T09:00:00Z",
                               param=param) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@router.get("/audit", response_model=Page[AuditEntryOut], responses=error_responses(403))
def list_audit(
    caller: CallerDep,
    s: SessionDep,
    since: str | None = Query(None, pattern=ISO_TIME, json_schema_extra={"format": "date-time"},
                              description="Only entries at or after this time (ISO 8601; "
                              "without a zone: UTC)."),
    limit: int = Query(100, ge=1, le=1000, description="At most this many (the newest)."),
) -> Page[AuditEntryOut]:
    """Audited calls, oldest first: every change and every denied attempt (see
    ``server.services.audit``). Needs an admin token."""
    return Page(data=svc.list_entries(s, caller=caller, since=_parse_time(since, param="since"),
                                      limit=limit))
