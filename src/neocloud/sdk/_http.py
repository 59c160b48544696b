"""The HTTP layer of the SDK: one authenticated httpx client, errors turned into
:mod:`neocloud.errors` exceptions, responses parsed into wire models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from neocloud.errors import (
    InvalidRequest,
    NeocloudError,
    NotFound,
    Timeout,
    Unauthenticated,
    Unavailable,
    UpstreamError,
    ValidationFailed,
    from_wire,
)
from neocloud.models.common import Page

M = TypeVar("M", bound=BaseModel)

API_PREFIX = "/api/v1"
#: The server's 404 for a path no route matches (not a missing resource, whose message
#: names it): the message of the REST API's, the code of the gateway's. The base URL is
#: likely wrong.
ROUTE_MISS = "Not Found"
ROUTE_MISS_CODE = "unknown_route"


class HttpApi:
    """Sends REST calls to ``<url>/api/v1`` with ``Authorization: Bearer <token>``.

    Args:
        url: base URL of the control plane, e.g. ``http://127.0.0.1:8700`` (no ``/api/v1``).
        token: API token, or ``None`` to send no ``Authorization`` header.
        timeout: seconds to wait for connect, read and write of one request.
        transport: an httpx transport to use instead of the network (tests, proxies).
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        headers = {"Accept": "application/json", "User-Agent": "neocloud-sdk"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.url + API_PREFIX,
            headers=headers,
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """Send one request; return the response when its status is 2xx.

        Raises:
            NeocloudError: the subclass the server raised (rebuilt from its error object).
            Unavailable: the control plane cannot be reached at :attr:`url`.
            Timeout: no answer within :attr:`timeout` seconds.
        """
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._client.request(method, path, json=json, params=params or None)
        except httpx.TimeoutException as exc:
            raise Timeout(
                f"the control plane at {self.url} did not answer {method} {path} "
                f"within {self.timeout:g} s"
            ) from exc
        except httpx.ConnectError as exc:
            raise Unavailable(
                f"cannot reach the neocloud control plane at {self.url} ({exc}); "
                "is it running? Start one with `neocloud up`, or set NEOCLOUD_URL",
                code="unreachable",
            ) from exc
        except httpx.TransportError as exc:
            raise Unavailable(
                f"connection to the control plane at {self.url} failed: {exc}",
                code="unreachable",
            ) from exc
        if response.is_success:
            return response
        raise self._error(response)

    def _error(self, response: httpx.Response) -> NeocloudError:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text.strip()[:500]
        error = from_wire(response.status_code, body)
        route_miss = isinstance(error, NotFound) and (error.message == ROUTE_MISS
                                                      or error.code == ROUTE_MISS_CODE)
        if (response.is_redirect or route_miss) and has_empty_segment(response.request):
            request = response.request
            return InvalidRequest(
                f"{request.method} {request.url.path}: an empty name in the path (a name "
                "given as '')", param="name", code="empty_name")
        if route_miss:
            request = response.request
            error = NotFound(
                f"{request.method} {request.url.path}: no such API route at {self.url} "
                f"({error.message}); the URL (--url, NEOCLOUD_URL, url=) must be the "
                "control plane's base URL, e.g. http://127.0.0.1:8700",
                param="url", code=error.code)
        if isinstance(error, Unauthenticated) and not self.token:
            error = Unauthenticated(
                f"{error.message} (no API token configured: run `neocloud up`, set "
                "NEOCLOUD_TOKEN, or pass token=)",
                param=error.param,
                code=error.code,
            )
        return error

    def get_model(self, model: type[M], path: str, params: dict[str, Any] | None = None) -> M:
        """``GET path`` parsed as ``model``."""
        return parse(model, self.request("GET", path, params=params))

    def get_list(self, model: type[M], path: str, params: dict[str, Any] | None = None) -> list[M]:
        """``GET path`` of a list object ``{"object": "list", "data": [...]}``."""
        page = parse(Page[model], self.request("GET", path, params=params))  # type: ignore[valid-type]
        return list(page.data)

    def send_model(self, method: str, model: type[M], path: str, body: BaseModel) -> M:
        """Send ``body`` (only the fields that were set) and parse the answer as ``model``."""
        payload = body.model_dump(mode="json", exclude_unset=True)
        return parse(model, self.request(method, path, json=payload))


def has_empty_segment(request: httpx.Request) -> bool:
    """Whether the path of ``request`` has an empty segment (``/tokens/``,
    ``/workspaces//tokens/x``): a name given as ``''``, which the API answers with a
    redirect to the path without the trailing ``/`` (the SDK follows none) or with the
    404 of a path no route matches. Read on the encoded path after ``/api/v1`` (a ``/``
    inside a name is ``%2F`` there; a base URL with ``//`` in it is not a name)."""
    path = request.url.raw_path.split(b"?", 1)[0].rpartition(API_PREFIX.encode())[2]
    return path.endswith(b"/") or b"//" in path


def parse(model: type[M], response: httpx.Response,
          adapt: Callable[[Any], Any] | None = None) -> M:
    """Parse a 2xx JSON response body as ``model``; ``adapt`` (if given) rewrites the
    decoded JSON first (an answer of an older server into the current form).

    Raises:
        UpstreamError: the body is not JSON or does not match the model (a server of
            another version, or not a neocloud server at all).
    """
    try:
        body = response.json()
        return model.model_validate(adapt(body) if adapt is not None else body)
    except (ValueError, ValidationError) as exc:
        request = response.request
        raise UpstreamError(
            f"unexpected answer to {request.method} {request.url.path} "
            f"(HTTP {response.status_code}): {_first_line(exc)}"
        ) from exc


def build(request_model: type[M], /, **fields: Any) -> M:
    """Build a request model from the fields that are not ``None``, checking them locally.

    Raises:
        ValidationFailed: a field breaks the model's rules; ``param`` is ``body.<field>``.
    """
    try:
        return request_model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        where = f"body.{loc}" if loc else "body"
        raise ValidationFailed(f"{where}: {first['msg']}", param=where) from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
