"""The audit log's place in the request path: an ASGI middleware around the REST API.

It lets the request through, watches the answer, and - for the calls
:mod:`neocloud.server.services.audit` records - writes the entry and commits it *before*
the response starts, so a client that got its answer can read the entry at once. The
caller comes from ``request.state.caller`` (set by :func:`neocloud.server.deps.get_caller`),
the operation from the route FastAPI matched, the error code from the OpenAI error
object of an error response, and a created object's name from a ``201`` body (or, for a
refused create, from the request's body).

Beside ``/api/v1`` it watches the control plane's ``/metrics``, which needs an operator
token: its refusals (401, 403) are recorded like any denied attempt; its successes, a
Prometheus scrape every few seconds, are reads and are not.

A dry run (``?dry_run=true``) changes nothing and is not recorded, nor is a call refused
with ``503 database_busy``: the database that could not take the call's write would make
its entry wait the same busy timeout again before the answer goes out.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from neocloud.asgi import Message, Receive, Scope, Send
from neocloud.server.db.engine import Database
from neocloud.server.security import bearer_token
from neocloud.server.services import audit

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"

#: Paths outside :data:`API_PREFIX` that are audited too (reads: only their refusals).
AUDITED_PATHS = frozenset({"/metrics"})

#: The error code of a call the database was too busy to take (not recorded).
DATABASE_BUSY = "database_busy"

#: Bytes of a body kept to read an error's ``code`` or a created object's ``name`` (both
#: are small JSON objects).
_ERROR_BODY_BYTES = 8192


class AuditLog:
    """ASGI middleware that records audited calls of ``/api/v1`` in ``db``."""

    def __init__(self, app: Any, db: Database):
        self.app = app
        self.db = db

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not _is_audited(scope["path"])
                or _is_dry_run(scope)):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        held: list[Message] = []
        body = bytearray()
        request_body = bytearray()
        done = False

        async def read(message_source: Receive = receive) -> Message:
            message = await message_source()
            if method == "POST" and message["type"] == "http.request":
                chunk = message.get("body", b"")
                request_body.extend(chunk[: _ERROR_BODY_BYTES - len(request_body)])
            return message

        async def write_entry(status: int) -> None:
            call = _call_of(scope, method, status, bytes(body), bytes(request_body))
            if call.code == DATABASE_BUSY:
                return
            bearer = _bearer_of(scope) if call.caller is None else None
            try:
                await asyncio.to_thread(audit.record, self.db, call, bearer=bearer)
            except Exception:  # the answer still goes out; the failure is logged
                log.exception("cannot write the audit entry of %s %s", method, call.target)

        async def watch(message: Message) -> None:
            nonlocal done
            if done:
                await send(message)
                return
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if not audit.is_candidate(method, status):
                    done = True
                    await send(message)
                    return
                if status < 400 and not (status == 201 and method == "POST"):
                    done = True
                    await write_entry(status)
                    await send(message)
                    return
                # An error (its code) or a create (the new object's name): read the body
                # first.
                held.append(message)
                return
            if message["type"] == "http.response.body" and held:
                held.append(message)
                body.extend(message.get("body", b"")[: _ERROR_BODY_BYTES - len(body)])
                if message.get("more_body", False) and len(body) < _ERROR_BODY_BYTES:
                    return
                done = True
                await write_entry(int(held[0]["status"]))
                for m in held:
                    await send(m)
                held.clear()
                return
            await send(message)

        await self.app(scope, read, watch)
        for m in held:  # the app ended with a partial error body: send what it gave
            await send(m)


def _is_audited(path: str) -> bool:
    return path.startswith(API_PREFIX) or path in AUDITED_PATHS


def _bearer_of(scope: Scope) -> str | None:
    """The token of the request's ``Authorization: Bearer`` header, if it has one."""
    for key, value in scope.get("headers") or ():
        if key == b"authorization":
            return bearer_token(value.decode("latin-1"))
    return None


def _is_dry_run(scope: Scope) -> bool:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return any(v.lower() in ("1", "true", "yes", "on") for v in query.get("dry_run", []))


def _json_of(raw: bytes) -> Any:
    """``raw`` decoded as JSON, or ``None`` when it is not JSON.

    Any input is answered, never raised: a request body nested thousands of levels deep
    makes ``json.loads`` raise ``RecursionError`` (not a ``ValueError``), and an exception
    here would replace the route's answer with a 500.
    """
    try:
        return json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None


def _call_of(scope: Scope, method: str, status: int, body: bytes,
             request_body: bytes = b"") -> audit.Call:
    path: str = scope["path"]
    target = path[len(API_PREFIX):] if path.startswith(API_PREFIX) else path.lstrip("/")
    route = scope.get("route")
    name = getattr(route, "name", None)
    full_match = route is not None and scope.get("endpoint") is getattr(route, "endpoint", 1)
    methods = getattr(route, "methods", None) or set()
    if name and full_match and method in methods:
        action = str(name)
    else:
        action = f"{method} /{target}"
    params = scope.get("path_params") or {}
    caller = (scope.get("state") or {}).get("caller")
    code = None
    doc = _json_of(body)
    if isinstance(doc, dict) and status >= 400:
        err = doc.get("error")
        code = err.get("code") if isinstance(err, dict) else None
        sent = _json_of(request_body) if method == "POST" and "name" not in params else None
        if isinstance(sent, dict) and isinstance(sent.get("name"), str):
            target = f"{target.rstrip('/')}/{sent['name'][:200]}"  # a refused create
    elif isinstance(doc, dict) and isinstance(doc.get("name"), str) and "name" not in params:
        target = f"{target.rstrip('/')}/{doc['name']}"  # a create: the new object
    return audit.Call(
        method=method, target=target, action=action, status=status,
        code=str(code) if code is not None else None, caller=caller,
        noun=target.split("/", 1)[0],
        name=str(params["name"]) if "name" in params else None,
    )
