"""The audit log: every API call that changes state, and every denied attempt.

What is recorded (decided by :func:`outcome_of`, written by :func:`record`):

- every call with a mutating method (``POST``, ``PUT``, ``PATCH``, ``DELETE``) under
  ``/api/v1``, whatever its answer;
- every ``401`` and ``403`` under ``/api/v1``, whatever the method;
- every ``404`` on a workspace-scoped resource that exists in *another* workspace (the API
  answers 404 there so names cannot be probed; the log keeps the attempt, with
  ``target_workspace_id`` set so that workspace's admin sees it too).
- every call under ``/workspaces/{name}/...`` made from another workspace (an operator
  issuing or revoking a workspace's tokens, setting its quota) carries that workspace as
  ``target_workspace_id`` whatever its answer, so the workspace's admin sees what was done
  to it.

- every ``401`` and ``402`` the gateway answers (``/v1/...``, ``/endpoints/...``): a
  missing or invalid token, a workspace past its budget hard stop (:func:`record_refusal`,
  action ``gateway``, outcome ``denied``).

Entries are written by :class:`neocloud.server.audit_http.AuditLog` (and, for the gateway,
by :class:`neocloud.server.gateway_host.DbRefusalLog`) in a transaction of their own,
committed before the response starts, and never changed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from neocloud.gateway.types import Refusal
from neocloud.models import Role
from neocloud.models.audit import AuditEntryOut, AuditOutcome
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import (
    AuditEntry,
    Deployment,
    Job,
    Pod,
    Secret,
    Token,
    Volume,
    Workspace,
)
from neocloud.server.services.principal import Caller
from neocloud.server.services.workspaces import authenticate

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: Workspace-scoped resources by the first path segment under ``/api/v1``: a 404 on one of
#: these whose name exists in another workspace is a denied cross-workspace attempt.
_SCOPED: dict[str, Any] = {
    "deployments": Deployment,
    "jobs": Job,
    "pods": Pod,
    "secrets": Secret,
    "volumes": Volume,
    "tokens": Token,
}


@dataclass(frozen=True)
class Call:
    """One finished API call, as the audit log sees it.

    Attributes:
        method: HTTP method.
        target: the path under ``/api/v1`` (``jobs/train``).
        action: the API operation's name (``delete_job``), or ``METHOD /path`` when no
            route serves the method and path.
        status: the HTTP status answered.
        code: the error's machine-readable code (``None`` on success).
        caller: the authenticated caller, when a valid token was sent.
        noun: first path segment (``jobs``); ``name``: the ``{name}`` path parameter.
    """

    method: str
    target: str
    action: str
    status: int
    code: str | None
    caller: Caller | None
    noun: str
    name: str | None


def is_candidate(method: str, status: int) -> bool:
    """Whether a call may need an entry (a 404 still needs :func:`owner_elsewhere`)."""
    return method in MUTATING_METHODS or status in (401, 403, 404)


def owner_elsewhere(s: Session, call: Call) -> str | None:
    """The id of the workspace, other than the caller's, that owns the resource a 404 was
    answered for; ``None`` when there is none (the resource really does not exist)."""
    if call.caller is None or call.name is None:
        return None
    if call.noun == "workspaces":  # /workspaces/{name}/quota of someone else
        ws = s.scalars(select(Workspace.id).where(Workspace.name == call.name)).first()
        return ws if ws is not None and ws != call.caller.workspace_id else None
    table = _SCOPED.get(call.noun)
    if table is None:
        return None
    return s.scalars(
        select(table.workspace_id).where(table.name == call.name,
                                         table.workspace_id != call.caller.workspace_id)
    ).first()


def outcome_of(status: int, *, cross_workspace: bool) -> AuditOutcome:
    if status in (401, 403) or (status == 404 and cross_workspace):
        return AuditOutcome.denied
    return AuditOutcome.success if status < 400 else AuditOutcome.failed


def record(db: Database, call: Call, *, bearer: str | None = None) -> AuditEntry | None:
    """Write the entry for ``call`` if it needs one (see the module docstring) and commit
    it. Returns the entry, or ``None`` when the call is not audited.

    ``bearer``: the token the request sent. A call refused before its route asked who
    called (a body that is not JSON, a field the schema refuses) has no ``caller``; the
    token names it then, so the entry says whose call it was.
    """
    if not is_candidate(call.method, call.status):
        return None
    with db.session() as s:
        if call.caller is None and bearer:
            call = replace(call, caller=authenticate(s, secret=bearer))
        other = (owner_elsewhere(s, call)
                 if call.status == 404 or call.noun == "workspaces" else None)
        if call.method not in MUTATING_METHODS and call.status == 404 and other is None:
            return None
        entry = AuditEntry(
            workspace_id=call.caller.workspace_id if call.caller else None,
            target_workspace_id=other,
            token_name=call.caller.token_name if call.caller else None,
            method=call.method, action=call.action[:63], target=call.target[:1024],
            outcome=outcome_of(call.status,
                           cross_workspace=other is not None and call.status == 404).value,
            status=call.status, code=(call.code or None) and call.code[:63],
        )
        s.add(entry)
    return entry


#: The action of the entries the gateway's refusals write.
GATEWAY_ACTION = "gateway"


def record_refusal(db: Database, refusal: Refusal) -> AuditEntry:
    """Write and commit the entry of a request the gateway refused (401 or 402): the
    caller's workspace and token name when the token was valid, the path as target."""
    with db.session() as s:
        token_name = None
        if refusal.token_id is not None:
            token_name = s.scalars(select(Token.name).where(Token.id == refusal.token_id)
                                   ).first()
        entry = AuditEntry(
            workspace_id=refusal.workspace_id, target_workspace_id=None,
            token_name=token_name, method=refusal.method[:8], action=GATEWAY_ACTION,
            target=refusal.path.lstrip("/")[:1024], outcome=AuditOutcome.denied.value,
            status=refusal.status, code=refusal.code[:63] or None,
        )
        s.add(entry)
    return entry


def list_entries(s: Session, *, caller: Caller, since: datetime | None = None,
                 limit: int = 100) -> list[AuditEntryOut]:
    """The newest ``limit`` entries at or after ``since``, oldest first.

    An operator (admin of an operator workspace) sees every entry; the admin of any other
    workspace sees the calls its tokens made and the attempts on its resources.

    Raises:
        PermissionDenied: the caller is not an admin.
    """
    caller.require(Role.admin)
    q = select(AuditEntry)
    if not (caller.operator and caller.role is Role.admin):
        q = q.where(or_(AuditEntry.workspace_id == caller.workspace_id,
                        AuditEntry.target_workspace_id == caller.workspace_id))
    if since is not None:
        q = q.where(AuditEntry.at >= since)
    rows = list(s.scalars(q.order_by(AuditEntry.id.desc()).limit(limit)))
    names: dict[str, str] = {wid: name for wid, name in s.execute(
        select(Workspace.id, Workspace.name))}
    return [
        AuditEntryOut(
            id=r.id, at=r.at, workspace=names.get(r.workspace_id or ""),
            token_name=r.token_name, target_workspace=names.get(r.target_workspace_id or ""),
            method=r.method, action=r.action, target=r.target,
            outcome=AuditOutcome(r.outcome), status=r.status, code=r.code,
        )
        for r in reversed(rows)
    ]
