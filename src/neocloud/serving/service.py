"""The user-facing service contract: a :class:`Service` subclass with handler methods
marked by :func:`endpoint`, and :func:`batched` for batching inside a service.

A service is constructed with no arguments, told its served name and model reference,
then ``setup()`` runs once (sync or async) before the replica reports ready. Each
``@endpoint`` method becomes one HTTP route; its signature is its typed request and its
return annotation documents its response (see ``README.md`` next to this module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ENDPOINT_ATTR = "__neocloud_endpoint__"


@dataclass(frozen=True)
class EndpointSpec:
    """How one handler is served.

    Attributes:
        path: URL path; default ``/<method name>``.
        method: ``GET`` or ``POST``.
        max_batch_size: > 1 turns on dynamic batching: the handler then takes one
            ``list[T]`` argument (one ``T`` per request) and returns one output per input.
        max_wait_ms: longest time (milliseconds) the first queued request waits for the
            batch to fill; the wait ends early when every in-flight request is queued.
        timeout_s: per-request limit (seconds, queueing included); past it the client gets
            504 and the handler is cancelled (async) or its result discarded (sync).
        max_concurrency: most requests running the handler at once; others wait in line.
        media_type: content type of a streamed response (default ``text/event-stream``:
            Server-Sent Events); any other type sends the yielded bytes/str as is.
        warmup: an example input the runtime sends through this handler once, after
            ``setup()`` and before ``/ready`` turns 200 (a JSON-serialisable value: the
            body of a POST, the query parameters of a GET; for a batched endpoint one
            item). A service that loads its model on first use declares it so that a
            replica reported ready has loaded it. A failing warm-up call fails the replica
            like a failing ``setup()``. ``None``: no warm-up call.
    """

    path: str | None = None
    method: str = "POST"
    max_batch_size: int = 1
    max_wait_ms: float = 10.0
    timeout_s: float | None = None
    max_concurrency: int | None = None
    media_type: str | None = None
    warmup: Any = None

    def __post_init__(self) -> None:
        if self.method not in ("GET", "POST"):
            raise ValueError(f"endpoint method must be GET or POST, not {self.method!r}")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"endpoint path must start with '/', not {self.path!r}")
        if self.warmup is not None and self.method == "GET" and not isinstance(self.warmup,
                                                                              dict):
            raise ValueError("the warmup of a GET endpoint is a dict of query parameters")


def endpoint(
    fn: F | None = None,
    *,
    path: str | None = None,
    method: str = "POST",
    max_batch_size: int = 1,
    max_wait_ms: float = 10.0,
    timeout_s: float | None = None,
    max_concurrency: int | None = None,
    media_type: str | None = None,
    warmup: Any = None,
) -> Any:
    """Mark a :class:`Service` method as an HTTP handler (usable bare or with options).

    The method may be ``def`` (runs in a worker thread) or ``async def`` (runs on the
    event loop), and a generator of either kind streams. Options: see
    :class:`EndpointSpec`. Raises ``ValueError`` for invalid options.
    """
    spec = EndpointSpec(
        path=path,
        method=method.upper(),
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        timeout_s=timeout_s,
        max_concurrency=max_concurrency,
        media_type=media_type,
        warmup=warmup,
    )

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError("@endpoint decorates a method")
        setattr(f, ENDPOINT_ATTR, spec)
        return f

    return mark(fn) if fn is not None else mark


class Service:
    """Base class of every servable service.

    Subclasses override :meth:`setup` (load the model; may be ``async``) and define
    handlers with :func:`endpoint`. The runtime sets :attr:`name` (the name the replica
    answers to, also in the OpenAI ``model`` field) and :attr:`model_ref` (the ``--model``
    argument, or ``None``) before calling ``setup()``.
    """

    #: The name clients use for this service (``/v1/models``, ``model`` field).
    name: str = "service"
    #: The ``--model`` reference given at start (``hf:org/name``, a folder, ...), or None.
    model_ref: str | None = None

    def setup(self) -> Any:
        """Load what the handlers need; runs once before ``/ready`` turns 200."""
        return None

    def warmup(self) -> Any:
        """Warm what ``setup()`` left cold (may be ``async``); runs once after ``setup()``
        and before the ``warmup`` calls of the endpoints (see :class:`EndpointSpec`), all
        before ``/ready`` turns 200. Raising fails the replica like a failing ``setup()``."""
        return None

    def teardown(self) -> Any:
        """Release resources; runs once at shutdown after in-flight requests drained."""
        return None

    def model_names(self) -> list[str]:
        """Names listed by ``GET /v1/models`` and accepted in the OpenAI ``model`` field."""
        return [self.name]


def endpoints_of(obj: Service) -> list[tuple[str, Callable[..., Any], EndpointSpec]]:
    """The ``(attribute name, bound method, spec)`` of every ``@endpoint`` of ``obj``,
    in class definition order (base classes first)."""
    specs: dict[str, EndpointSpec] = {}
    for klass in reversed(type(obj).__mro__):
        for attr, value in vars(klass).items():
            spec = getattr(value, ENDPOINT_ATTR, None)
            if isinstance(spec, EndpointSpec):
                specs[attr] = spec  # an override without the decorator keeps the spec
    return [(attr, getattr(obj, attr), spec) for attr, spec in specs.items()]
