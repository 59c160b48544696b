"""Every generated token billed once: the replica's engine is the source of truth.

The gateway gives every request it forwards a fresh meter id, sent to the replica as
``X-Neocloud-Meter-Id`` (a client's own header of that name is dropped, so no client can
read or overwrite another request's count). An engine that meters (the built-in ``chat``
service) counts each request's tokens under that id, whatever the client asked for.

When the response itself does not carry the full count — a stream without
``stream_options.include_usage`` (its usage chunk is sent only when asked for), a client
that disconnected mid-stream, a replica that failed mid-response — the gateway asks the
replica, after the response and off the request's path, ``GET /usage?id=<meter
id>&wait_s=<s>``; the replica answers once the request finished there (a cancelled one
finishes at the engine's next step). The counts it returns are recorded; when the replica
does not meter (404, or no answer) the gateway falls back to what it read from the bytes
(:mod:`neocloud.gateway.usage`). Client-visible responses are never changed.
"""

from __future__ import annotations

import json
import logging

from neocloud.gateway.client import UpstreamPool

log = logging.getLogger("neocloud.gateway")

#: Request header carrying the meter id to the replica.
METER_HEADER = b"x-neocloud-meter-id"
#: How long the replica may take to finish a request before answering (seconds).
USAGE_WAIT_S = 5.0


#: Gateway path prefix of requests by deployment name (``/endpoints/{name}/{path}``).
ENDPOINTS_PREFIX = "/endpoints/"


def replica_path(path: str) -> str:
    """The path a replica answers for gateway path ``path``: a request by deployment name,
    ``/endpoints/{name}/{rest}``, reaches it as ``/{rest}``; others as they are."""
    if not path.startswith(ENDPOINTS_PREFIX):
        return path
    _name, slash, rest = path[len(ENDPOINTS_PREFIX):].partition("/")
    return slash + rest if slash else "/"


def needs_replica_count(method: str, path: str, status: int, found: bool) -> bool:
    """Whether the bytes the gateway saw may undercount a request: an inference ``POST``
    under ``/v1/`` (of the replica: ``/endpoints/{name}/v1/...`` too, see
    :func:`replica_path`) that streamed without a usage object, or that the client or
    the replica cut short (``status`` 499 / 502). ``path``: the gateway's path."""
    if method != "POST" or not replica_path(path).startswith("/v1/"):
        return False
    return status in (499, 502) or (status == 200 and not found)


async def replica_count(pool: UpstreamPool, url: str, meter_id: bytes,
                        timeout_s: float = USAGE_WAIT_S + 5.0) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` the replica at ``url`` counted for
    ``meter_id``, or ``None`` when it does not meter that request or cannot be asked."""
    tgt = pool.target(url)
    try:
        conn = await pool.connect(tgt)
    except Exception as exc:
        log.debug("usage look-up: cannot reach %s: %s", url, exc)
        return None
    ok = False
    try:
        target = tgt.prefix + b"/usage?id=" + meter_id + f"&wait_s={USAGE_WAIT_S:g}".encode()
        conn.send(b"GET " + target + b" HTTP/1.1\r\nhost: " + tgt.host_header + b"\r\n\r\n", b"")
        await conn.wait_head(timeout_s)
        parts: list[bytes] = []
        while True:
            data = conn.take()
            if data is not None:
                parts.append(data)
                continue
            if conn.complete:
                break
            await conn.wait_body()
        ok = True
        if conn.status != 200:
            return None
        body = json.loads(b"".join(parts))
        prompt, completion = body.get("prompt_tokens"), body.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        return prompt, completion
    except Exception as exc:
        log.debug("usage look-up at %s failed: %s", url, exc)
        return None
    finally:
        if ok:
            conn.release()
        else:
            conn.abort()
