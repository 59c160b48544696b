"""One exception tree for the server, the gateway, the serving runtime, the SDK and the CLI.

Every error carries a machine-readable ``code``, an HTTP ``status`` and, where one input
field is to blame, the ``param`` that names it. On the wire every error is the OpenAI error
object (https://platform.openai.com/docs/guides/error-codes)::

    {"error": {"message": "...", "type": "...", "param": "...", "code": "..."}}

The SDK turns such a body back into the same class (:func:`from_wire`), so code that calls
the REST API through the SDK catches the very exceptions the server raised.

Hierarchy::

    NeocloudError (500, internal_error)
     ├── InvalidRequest (400, invalid_request_error)
     │    ├── ValidationFailed (422)
     │    ├── PayloadTooLarge (413)
     │    └── Unsupported (400)
     ├── Unauthenticated (401)
     ├── PermissionDenied (403)
     ├── NotFound (404)
     ├── Conflict (409)
     │    └── AlreadyExists (409)
     ├── PaymentRequired (402)
     │    └── BudgetExceeded (402, budget_exceeded)
     ├── QuotaExceeded (429, insufficient_quota)
     ├── RateLimited (429)
     ├── Timeout (504)
     ├── Unavailable (503)
     │    └── NoReadyReplica (503)
     ├── UpstreamError (502)
     └── InsufficientStorage (507)
"""

from __future__ import annotations

from typing import Any, ClassVar


class NeocloudError(Exception):
    """Base of every neocloud error.

    Args:
        message: a sentence for a person; names the field or resource at fault.
        param: the request field at fault (dotted path such as ``body.replicas``), if any.
        code: overrides the class's default machine-readable code.
    """

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def to_wire(self) -> dict[str, Any]:
        """The OpenAI error object for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, param={self.param!r}, code={self.code!r})"


class InvalidRequest(NeocloudError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class ValidationFailed(InvalidRequest):
    status = 422
    default_code = "validation_failed"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "payload_too_large"


class Unsupported(InvalidRequest):
    default_code = "unsupported"


class Unauthenticated(NeocloudError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(NeocloudError):
    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class NotFound(NeocloudError):
    status = 404
    type = "not_found_error"
    default_code = "not_found"


class Conflict(NeocloudError):
    status = 409
    type = "conflict_error"
    default_code = "conflict"


class AlreadyExists(Conflict):
    default_code = "already_exists"


class PaymentRequired(NeocloudError):
    status = 402
    type = "payment_required"
    default_code = "payment_required"


class BudgetExceeded(PaymentRequired):
    """The workspace's budget has a hard stop and this month's spend reached it."""

    default_code = "budget_exceeded"


class QuotaExceeded(NeocloudError):
    status = 429
    type = "insufficient_quota"
    default_code = "quota_exceeded"


class RateLimited(NeocloudError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limited"


class Timeout(NeocloudError):
    status = 504
    type = "timeout_error"
    default_code = "timeout"


class Unavailable(NeocloudError):
    status = 503
    type = "service_unavailable"
    default_code = "unavailable"


class NoReadyReplica(Unavailable):
    default_code = "no_ready_replica"


class UpstreamError(NeocloudError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class InsufficientStorage(NeocloudError):
    """The storage behind a volume (or the data folder) is full: the disk has no space
    left (``ENOSPC``) or its quota is spent (``EDQUOT``). Nothing partial was kept."""

    status = 507
    type = "insufficient_storage"
    default_code = "insufficient_storage"


_BY_CODE: dict[str, type[NeocloudError]] = {}
_BY_STATUS: dict[int, type[NeocloudError]] = {}


def _index(cls: type[NeocloudError]) -> None:
    _BY_CODE.setdefault(cls.default_code, cls)
    _BY_STATUS.setdefault(cls.status, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(NeocloudError)


def from_wire(status: int, body: Any) -> NeocloudError:
    """Rebuild the exception that produced an HTTP error response.

    Args:
        status: the HTTP status code of the response.
        body: the decoded JSON body (an OpenAI error object), or anything else.

    Returns:
        An instance of the matching :class:`NeocloudError` subclass, chosen by ``code``
        first, then by ``status``; a plain :class:`NeocloudError` when neither matches.
    """
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        message = body if isinstance(body, str) and body else f"HTTP {status}"
        cls = _BY_STATUS.get(status, NeocloudError)
        return cls(str(message))
    code = err.get("code")
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None or cls.status != status:
        cls = _BY_STATUS.get(status, NeocloudError)
    return cls(str(err.get("message") or f"HTTP {status}"), param=err.get("param"), code=code)
