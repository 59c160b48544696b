"""The error body of every failed API call: the OpenAI error object."""

from __future__ import annotations

from neocloud.models.common import OutModel


class ErrorDetail(OutModel):
    """``message`` for a person; ``type`` the error family (``invalid_request_error``,
    ``authentication_error``, ...); ``param`` the request field at fault (dotted path),
    if any; ``code`` the machine-readable code (``validation_failed``, ``not_found``, ...).
    """

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(OutModel):
    """``{"error": {...}}``, as in https://platform.openai.com/docs/guides/error-codes."""

    error: ErrorDetail
