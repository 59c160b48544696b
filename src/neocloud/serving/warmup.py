"""Warm-up of a replica: after ``setup()`` and before ``/ready`` turns 200, the runtime runs
the service's ``warmup()`` hook, then sends each endpoint's declared ``warmup`` input through
the same path a client request takes (decoding, batcher, concurrency limit, the handler,
a stream read to its end). A service that loads its model on first use is thus loaded
before the replica is reported servable, and the first client request does not pay for it.

Warm-up calls carry the header ``X-Neocloud-Warmup: 1`` (a service may tell them apart)
and are not counted in the request metrics.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from neocloud.serving.handlers import Handler, as_stream
from neocloud.serving.request import Request
from neocloud.serving.responses import Response, dumps
from neocloud.serving.service import ENDPOINT_ATTR

log = logging.getLogger("neocloud.serving")

#: Header set on every warm-up call (lower-case, as the runtime passes headers).
WARMUP_HEADER = b"x-neocloud-warmup"


class WarmupError(RuntimeError):
    """A warm-up step failed; the message names the step and quotes the error."""


def warmup_request(h: Handler) -> Request:
    """The request the runtime sends to ``h`` for its declared ``warmup`` input."""
    value = h.spec.warmup
    headers = [(WARMUP_HEADER, b"1"), (b"x-request-id", b"warmup")]
    if h.get:
        query = urlencode(value, doseq=True).encode()
        return Request("GET", h.path, query, headers, b"")
    body = value if isinstance(value, bytes) else dumps(value)
    headers.append((b"content-type", b"application/json"))
    return Request("POST", h.path, b"", headers, body)


async def _consume(result: Any, h: Handler) -> None:
    """Read a streamed result to its end (an error response raises)."""
    if isinstance(result, Response) and result.status >= 400:
        raise WarmupError(f"answered {result.status}")
    stream = as_stream(result, h.media_type)
    if stream is None:
        return
    it = stream.items
    try:
        if hasattr(it, "__anext__"):
            async for _ in it:  # type: ignore[union-attr]
                pass
        else:
            await asyncio.to_thread(lambda: [None for _ in it])  # type: ignore[union-attr]
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
        elif callable(getattr(it, "close", None)):
            it.close()  # type: ignore[union-attr]


async def warm_up(service: Any, handlers: Iterable[Handler]) -> float:
    """Run the ``warmup()`` hook of ``service``, then one call of every handler that
    declares a ``warmup`` input; returns the seconds it took.

    Raises:
        WarmupError: the hook or a call raised (the message says which and quotes it).
    """
    started = time.perf_counter()
    hook = getattr(service, "warmup", None)
    if callable(hook) and not hasattr(hook, ENDPOINT_ATTR):  # an endpoint named warmup
        try:
            if inspect.iscoroutinefunction(hook):
                await hook()
            else:
                await asyncio.to_thread(hook)
        except Exception as exc:
            raise WarmupError(f"warmup() raised {type(exc).__name__}: {exc}") from exc
    for h in handlers:
        if h.spec.warmup is None:
            continue
        t0 = time.perf_counter()
        try:
            await _consume(await h.invoke(warmup_request(h)), h)
        except Exception as exc:
            raise WarmupError(
                f"warm-up call of {h.method} {h.path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        log.info("warm-up call of %s %s took %.3f s", h.method, h.path,
                 time.perf_counter() - t0)
    return time.perf_counter() - started


__all__ = ["WARMUP_HEADER", "WarmupError", "warm_up", "warmup_request"]
