"""The gateway's contract with whoever hosts it (the control plane, or the standalone runner).

The host implements three small protocols from its own state:

- :class:`Authenticator` turns a bearer token into a :class:`Principal` (or ``None``);
- :class:`RouteTable` resolves a deployment name inside a workspace to a :class:`Route`
  with the base URLs of its ready replicas, and wakes scaled-to-zero deployments;
- :class:`UsageSink` receives one :class:`RequestRecord` per proxied request
  (:class:`DurableUsageSink`: stored before the request is forwarded and before its
  response ends).

All values are plain frozen dataclasses so the gateway can cache and share them safely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a token.

    Attributes:
        token_id: stable id of the API token (never the secret itself).
        workspace_id: the workspace the token belongs to; routing never leaves it.
        role: ``"admin"``, ``"member"`` or ``"viewer"``.
    """

    token_id: str
    workspace_id: str
    role: str


@dataclass(frozen=True, slots=True)
class Upstream:
    """One ready replica.

    Attributes:
        replica_id: stable id of the replica (balancing state is keyed by it).
        url: base URL, e.g. ``"http://127.0.0.1:40123"``; an optional path prefix is kept.
    """

    replica_id: str
    url: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where requests for one deployment go.

    Attributes:
        deployment_id: stable id of the deployment.
        workspace_id: the owning workspace.
        name: the deployment name; the OpenAI ``model`` field and ``/endpoints/{name}``.
        upstreams: the ready replicas; empty while none is ready.
        can_wake: ``True`` for a deployment scaled to zero that may be started on demand;
            requests are then held until an upstream appears (see ``RouteTable.wake``).
        refusal: when set, every request is refused with HTTP 402 ``budget_exceeded`` and
            this message (the workspace's budget hard stop is reached).
        wake_timeout_s: how long requests are held while the deployment starts (its
            cold-start timeout, seconds); ``None``: the gateway's ``wake_timeout_s``.
        wake_error: set while the deployment cannot start (its replica crashed while
            starting): held requests fail at once with HTTP 503 and this message.
        scaled_to_zero: its desired replica count is 0 and it does not autoscale from
            zero (``neocloud scale NAME 0``): requests get HTTP 503
            ``deployment_scaled_to_zero`` at once, saying a request cannot wake it.
        serves: the OpenAI inference routes its replicas answer (see
            :func:`openai_paths_of`), e.g. ``("/v1/embeddings",)``; another of them
            (``/v1/chat/completions`` to an embeddings model) is a 400 naming ``model``
            and what the deployment serves. ``None``: not known, every route is forwarded.
        created: when the deployment was created, Unix seconds (the OpenAI model object's
            ``created``); 0: not known.
        owner: the owning workspace's name (the model object's ``owned_by``); ``None``:
            not known, ``workspace_id`` is given instead.
    """

    deployment_id: str
    workspace_id: str
    name: str
    upstreams: tuple[Upstream, ...]
    can_wake: bool = False
    refusal: str | None = None
    wake_timeout_s: float | None = None
    wake_error: str | None = None
    scaled_to_zero: bool = False
    serves: tuple[str, ...] | None = None
    created: int = 0
    owner: str | None = None


#: The OpenAI inference routes and what each does, as error messages name them.
OPENAI_ROUTES = {
    "/v1/embeddings": "embeddings",
    "/v1/chat/completions": "chat completions",
    "/v1/completions": "completions",
}
#: The OpenAI routes of the built-in services of the serving runtime.
BUILTIN_SERVES = {
    "embeddings": ("/v1/embeddings",),
    "chat": ("/v1/chat/completions", "/v1/completions"),
}


def openai_paths_of(service: str | None, engine: str = "builtin") -> tuple[str, ...] | None:
    """:attr:`Route.serves` of a deployment: the OpenAI routes of a built-in ``service``
    (engine ``builtin``); ``None`` (not known) for a service of the user's own or another
    engine."""
    if engine != "builtin" or service is None:
        return None
    return BUILTIN_SERVES.get(service)


@runtime_checkable
class Authenticator(Protocol):
    """Token lookup. Results are cached by the gateway for ``auth_cache_ttl_s`` seconds."""

    async def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or ``None`` when it is unknown, revoked or expired."""
        ...


@runtime_checkable
class RouteTable(Protocol):
    """Deployment routes of each workspace.

    ``resolve`` results are cached by the gateway for ``route_cache_ttl_s`` seconds, except
    while a woken deployment is awaited, when it is polled directly.
    """

    async def resolve(self, workspace_id: str, name: str) -> Route | None:
        """The route of deployment ``name`` in ``workspace_id``; ``None`` when there is none."""
        ...

    async def list_routes(self, workspace_id: str) -> list[Route]:
        """Every route of the workspace (for ``GET /v1/models``)."""
        ...

    async def wake(self, route: Route) -> None:
        """Ask for a scaled-to-zero deployment to start.

        The gateway then re-resolves the route until upstreams appear or its hold timeout
        passes (then 503). May raise a :class:`neocloud.errors.NeocloudError` (for example
        ``QuotaExceeded``), which is returned to every held request.
        """
        ...


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request that reached a deployment's route.

    Attributes:
        workspace_id: the caller's workspace.
        token_id: the caller's token id.
        deployment_id: the deployment the request was routed to.
        replica_id: the replica that answered; ``None`` when none was reached.
        path: the path the client asked for (``/v1/embeddings``, ``/endpoints/x/predict``).
        status: HTTP status sent to the client; 499 when the client went away first.
        latency_s: seconds from the request's arrival to the end of the response.
        prompt_tokens: ``usage.prompt_tokens`` of the response, else 0.
        completion_tokens: ``usage.completion_tokens`` of the response, else 0.
        started_at: arrival time, unix seconds.
        request_id: the request's meter id (unique per request; what a durable sink
            keys its rows by, so a retried write never counts a request twice);
            ``None`` when the gateway meters nothing.
    """

    workspace_id: str
    token_id: str
    deployment_id: str
    replica_id: str | None
    path: str
    status: int
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    started_at: float
    request_id: str | None = None


@runtime_checkable
class UsageSink(Protocol):
    """Receiver of request records; ``record`` must return at once (the host batches writes)."""

    def record(self, rec: RequestRecord) -> None:
        """Take one record; must not block or raise (exceptions are logged and dropped)."""
        ...


@runtime_checkable
class DurableUsageSink(UsageSink, Protocol):
    """A usage sink that stores each request before the gateway acts on it.

    The gateway awaits :meth:`opened` before it forwards a request (a failure refuses
    the request with 503: nothing is served that the sink did not take), and
    :meth:`ended` before the last bytes of a response it relays in full (a failure is
    logged; the sink must then find the request's count itself, e.g. from the replica).
    Records carry ``request_id``; ``record`` is not called.
    """

    async def opened(self, rec: RequestRecord) -> None:
        """Store the request about to be forwarded (``status`` 0, no tokens yet)."""
        ...

    async def ended(self, rec: RequestRecord, *, final: bool) -> None:
        """Store how the request ended; ``final=False``: the replica's own count is still
        to come, in a second call with ``final=True``."""
        ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the gateway refused for who sent it, not for what it asked: 401 (no,
    unknown, revoked or expired token) or 402 (the workspace's budget hard stop).

    Attributes:
        method: HTTP method.
        path: the path asked for (``/v1/chat/completions``, ``/endpoints/x/predict``).
        status: 401 or 402.
        code: the error's machine-readable code (``invalid_api_key``, ``budget_exceeded``).
        workspace_id: the caller's workspace; ``None`` when the token was not valid.
        token_id: the caller's token id; ``None`` when the token was not valid.
        deployment_id: the deployment asked for, when it was resolved (402).
    """

    method: str
    path: str
    status: int
    code: str
    workspace_id: str | None = None
    token_id: str | None = None
    deployment_id: str | None = None


@runtime_checkable
class RefusalSink(Protocol):
    """Receiver of refusals (the host's audit log). The gateway awaits ``refused`` before
    it answers, so the entry is stored by the time the client reads the refusal."""

    async def refused(self, refusal: Refusal) -> None:
        """Store one refusal; exceptions are logged and the refusal is answered anyway."""
        ...
