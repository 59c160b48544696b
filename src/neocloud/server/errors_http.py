"""Errors mapped to HTTP in one place: every error body is the OpenAI error object."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from neocloud.errors import (
    AlreadyExists,
    Conflict,
    InvalidRequest,
    NeocloudError,
    ValidationFailed,
)

log = logging.getLogger(__name__)

_HTTP_TYPES = {
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
}


def error_response(err: NeocloudError) -> JSONResponse:
    return JSONResponse(err.to_wire(), status_code=err.status)


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


def install(app: FastAPI) -> None:
    @app.exception_handler(NeocloudError)
    async def _neocloud(_req: Request, exc: NeocloudError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        typ, code = _HTTP_TYPES.get(exc.status_code, ("invalid_request_error", "http_error"))
        body = {"error": {"message": str(exc.detail), "type": typ, "param": None, "code": code}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(IntegrityError)
    async def _integrity(_req: Request, exc: IntegrityError) -> JSONResponse:
        # A unique name taken by a request that raced this one past the service's check.
        text = str(exc.orig).lower()
        if "unique" in text or "duplicate" in text:
            return error_response(AlreadyExists(
                "a resource of that name already exists (created at the same moment)",
                param="name"))
        return error_response(Conflict("the request conflicts with the current state; retry"))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(NeocloudError("internal error; see the control-plane log"))
