"""Errors mapped to HTTP in one place: every error body is the OpenAI error object.

:func:`install` registers the handlers; :func:`document_errors` writes, for every API
route, the error statuses it can answer (with :class:`neocloud.models.errors.ErrorResponse`
as their schema) into the OpenAPI schema. The rule, from what the shared parts raise:

- ``401``: every route (each needs a token);
- ``422``: every route with parameters or a body (the first problem, naming the field);
- ``400``: every route with parameters or a body (malformed JSON, a value the service
  refuses such as a bad path or service reference);
- ``404``: every route with parameters or a body (a named resource, or one the body or a
  query parameter refers to, such as a shape, a secret or a workspace);
- ``413``: every route with a body (the request-body limit, or the file-size limit);
- ``403`` and ``409``: every route with a mutating method (roles; state and name
  conflicts);
- anything a route declares itself in ``responses`` (e.g. ``403`` on an admin-only read,
  ``402`` on the routes that admit new work: :data:`BUDGET_SPENT`).

Any route may also answer ``503 database_busy`` with ``Retry-After`` (the database's write
lock was not got in time: :func:`database_busy`) and ``507`` (the database is full:
:func:`database_full`); neither is listed per route.

Routes whose success answer is not JSON (logs, downloads) still answer errors as JSON; their
error responses say so.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from neocloud.errors import (
    AlreadyExists,
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    NeocloudError,
    Unavailable,
    ValidationFailed,
)
from neocloud.models.errors import ErrorResponse

log = logging.getLogger(__name__)

_HTTP_TYPES = {
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
}


def error_response(err: NeocloudError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.to_wire(), status_code=err.status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_error(exc: RequestValidationError) -> NeocloudError:
    """The first problem of a request, as a 400 (malformed JSON) or 422 naming the field."""
    errs = exc.errors()
    if not errs:
        return ValidationFailed("invalid request")
    first = errs[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return InvalidRequest(
            f"malformed JSON body: {ctx.get('error', 'cannot parse')}", param="body",
            code="invalid_json",
        )
    field = _field(first.get("loc", ()))
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
    if first.get("type") == "missing":
        return ValidationFailed(f"{field}: field required{more}", param=field)
    return ValidationFailed(f"{field}: {msg}{more}", param=field)


#: What FastAPI answers (a 400 ``HTTPException``) for a body its JSON parser gave up on
#: with an error other than ``JSONDecodeError``.
_PARSE_FAILED = "There was an error parsing the body"


def body_parse_error(exc: StarletteHTTPException) -> NeocloudError | None:
    """The 400 naming ``body`` for a request body FastAPI could not parse, or ``None`` for
    any other HTTP exception.

    FastAPI turns a ``JSONDecodeError`` into a validation error (handled by
    :func:`validation_error`) but any other parser failure into a bare 400 that names no
    field: bytes that are not UTF-8 (``UnicodeDecodeError``) and nesting deeper than the
    parser's recursion limit (``RecursionError``). Both are malformed JSON bodies.
    """
    if exc.status_code != 400 or exc.detail != _PARSE_FAILED:
        return None
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        why = f"the body is not valid UTF-8 (byte {cause.start})"
    elif isinstance(cause, RecursionError):
        why = "the body is nested too deeply"
    else:
        why = "cannot parse"
    return InvalidRequest(f"malformed JSON body: {why}", param="body", code="invalid_json")


#: PostgreSQL's SQLSTATE for ``disk_full``.
_PG_DISK_FULL = "53100"


def database_full(exc: OperationalError) -> InsufficientStorage | None:
    """The 507 for a write the database refused for want of room, or ``None``.

    SQLite says ``database or disk is full`` (``SQLITE_FULL``); PostgreSQL raises SQLSTATE
    ``53100`` (``disk_full``). Nothing of the request was stored (its transaction was
    rolled back), so the caller may retry once the operator made room; the answer used to
    be a 500 that said nothing of the cause.
    """
    orig = exc.orig
    text = str(orig).lower()
    if (getattr(orig, "sqlstate", None) == _PG_DISK_FULL or "database or disk is full" in text
            or "no space left on device" in text):
        return InsufficientStorage(
            "the control plane's database has no room left (its disk is full); nothing "
            "was changed: retry once the operator has freed space")
    return None


#: PostgreSQL's SQLSTATEs for a transaction that lost a race for a lock or a snapshot:
#: ``serialization_failure`` (a ``REPEATABLE READ``/``SERIALIZABLE`` transaction whose rows
#: changed under it), ``deadlock_detected`` and ``lock_not_available`` (``NOWAIT``, or
#: ``lock_timeout`` when one is set). Each rolled the transaction back whole.
_PG_BUSY = frozenset({"40001", "40P01", "55P03"})

#: SQLite's messages for a lock not got within the busy timeout (``SQLITE_BUSY``,
#: ``SQLITE_LOCKED``), and the writer queue's (:mod:`neocloud.server.db.sqlite_writers`),
#: which starts with the first.
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")

DATABASE_BUSY_RETRY_AFTER_S = 2
"""The ``Retry-After`` of a ``503 database_busy``, seconds."""


def database_busy(exc: OperationalError) -> Unavailable | None:
    """The 503 ``database_busy`` for a statement that did not get the database's lock in
    time, or ``None``.

    SQLite: another writer (often another process on the same file) held the write lock
    for longer than the busy timeout (30 s). PostgreSQL: the SQLSTATEs of :data:`_PG_BUSY`.
    The request's transaction was rolled back, so nothing of it was stored and the caller
    may send it again (after ``Retry-After``); it used to be a 500 ``internal_error``.
    """
    orig = exc.orig
    text = str(orig).lower()
    if getattr(orig, "sqlstate", None) in _PG_BUSY or any(m in text for m in _SQLITE_BUSY):
        return Unavailable(
            "the control plane's database is busy (another writer holds its lock); "
            "nothing was changed: retry in a moment", code="database_busy")
    return None


_DESCRIPTIONS = {
    400: "Bad request: malformed JSON, or a value the server refuses",
    401: "Missing or invalid API token",
    402: "Payment required: the workspace's budget is spent",
    403: "The token's role or workspace may not do this",
    404: "No such resource in the caller's workspace",
    405: "Method not allowed on this path (see the Allow header)",
    409: "Conflicts with the resource's state, or the name is taken",
    413: "Request body too large",
    422: "Invalid field (named in error.param)",
    429: "Too many requests, or over quota",
    507: "Insufficient storage: the disk behind the volume (or the database) is full",
}

_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for ``statuses``, each with the OpenAI error object."""
    return {s: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(s, "Error")}
            for s in statuses}


#: ``responses=`` of the routes that admit new work (creates, scale-ups, pod starts): a
#: workspace whose hard-stopped budget is spent gets 402 ``budget_exceeded``.
BUDGET_SPENT = error_responses(402)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by the definitions."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


#: The error object's JSON Schema, for routes whose success answer is not JSON (logs,
#: file downloads): their errors are still ``application/json``.
_ERROR_CONTENT = {"application/json": {"schema": _inline(ErrorResponse.model_json_schema())}}


def _answers_json(route: APIRoute) -> bool:
    cls = getattr(route.response_class, "value", route.response_class)  # Default(...)
    return isinstance(cls, type) and issubclass(cls, JSONResponse)


def route_error_statuses(route: APIRoute) -> set[int]:
    """The error statuses ``route`` can answer (the rule in the module docstring)."""
    d = route.dependant
    has_body = route.body_field is not None or ("PUT" in route.methods and "{path" in route.path)
    has_params = bool(_flat_params(d, "path_params") or _flat_params(d, "query_params")
                      or has_body)
    statuses = {401}
    if has_params:
        statuses |= {400, 404, 422}
    if has_body:
        statuses.add(413)
    if route.methods & _MUTATING:
        statuses |= {403, 409}
    return statuses


def _flat_params(dependant: Any, kind: str) -> list[Any]:
    found = list(getattr(dependant, kind))
    for sub in dependant.dependencies:
        found += _flat_params(sub, kind)
    return found


def document_errors(router: APIRouter) -> None:
    """Add the error statuses of every route of ``router`` to its ``responses`` (statuses
    a route declared itself are kept as they are). Call it before the router is included:
    FastAPI builds the included routes from these."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        json_route = _answers_json(route)
        for status in sorted(route_error_statuses(route)):
            if json_route:
                spec: dict[str, Any] = error_responses(status)[status]
            else:
                spec = {"description": _DESCRIPTIONS.get(status, "Error"),
                        "content": _ERROR_CONTENT}
            route.responses.setdefault(status, spec)


class AllowedMethods:
    """Which methods each path of the API serves, for the ``Allow`` header of a 405
    (Starlette names only the methods of the first route that matched the path).

    A path that several templates match (``/nodes/join`` and ``/nodes/{name}``) takes
    the methods of the most specific ones: the templates with the fewest parameters, as
    the OpenAPI schema lists them.
    """

    def __init__(self) -> None:
        self._paths: dict[str, tuple[re.Pattern[str], int, set[str]]] = {}

    def add(self, router: APIRouter, prefix: str = "") -> None:
        """Record the routes of ``router`` (included under ``prefix``); routers it
        includes itself are recorded by their own call."""
        for route in router.routes:
            path, methods = getattr(route, "path", None), getattr(route, "methods", None)
            if isinstance(path, str) and methods:
                full = prefix + path
                regex, _, convertors = compile_path(full)
                entry = self._paths.setdefault(full, (regex, len(convertors), set()))
                entry[2].update(methods)

    def of(self, path: str) -> list[str]:
        matches = [(n, served) for regex, n, served in self._paths.values()
                   if regex.match(path)]
        if not matches:
            return []
        fewest = min(n for n, _ in matches)
        return sorted(set().union(*(served for n, served in matches if n == fewest)))


def install(app: FastAPI) -> None:
    @app.exception_handler(NeocloudError)
    async def _neocloud(_req: Request, exc: NeocloudError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        unparseable = body_parse_error(exc)
        if unparseable is not None:
            return error_response(unparseable)
        typ, code = _HTTP_TYPES.get(exc.status_code, ("invalid_request_error", "http_error"))
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        if exc.status_code == 405:
            # Starlette names only the methods of the first route of the path.
            table: AllowedMethods | None = getattr(app.state, "allowed_methods", None)
            allow = table.of(_req.url.path) if table is not None else []
            headers["Allow"] = ", ".join(allow)
            message = f"method {_req.method} is not allowed here; allowed: {', '.join(allow)}"
        body = {"error": {"message": message, "type": typ, "param": None, "code": code}}
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(IntegrityError)
    async def _integrity(_req: Request, exc: IntegrityError) -> JSONResponse:
        # A unique name taken by a request that raced this one past the service's check.
        text = str(exc.orig).lower()
        if "unique" in text or "duplicate" in text:
            return error_response(AlreadyExists(
                "a resource of that name already exists (created at the same moment)",
                param="name"))
        return error_response(Conflict("the request conflicts with the current state; retry"))

    @app.exception_handler(OperationalError)
    async def _operational(_req: Request, exc: OperationalError) -> JSONResponse:
        full = database_full(exc)
        if full is not None:
            log.error("the database cannot grow: %s", exc.orig)
            return error_response(full)
        busy = database_busy(exc)
        if busy is not None:
            log.warning("a request found the database busy: %s", exc.orig)
            return error_response(
                busy, headers={"Retry-After": str(DATABASE_BUSY_RETRY_AFTER_S)})
        log.exception("database error")
        return error_response(NeocloudError("internal error; see the control-plane log"))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(NeocloudError("internal error; see the control-plane log"))
