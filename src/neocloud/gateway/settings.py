"""Gateway settings: one frozen dataclass, passed to :func:`neocloud.gateway.create_gateway`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Tunables of one gateway instance. Times are seconds, sizes bytes.

    Attributes:
        max_body_bytes: largest request body accepted; larger gets 413 (default 8 MiB).
        rate_limit_per_s: sustained requests per second allowed per token (token bucket
            refill rate); ``None`` turns rate limiting off.
        rate_limit_burst: bucket size, the requests a token may send at once; ``None`` means
            ``max(1, rate_limit_per_s)``.
        balancer: balancing policy name: ``"p2c"`` (power of two choices over outstanding
            requests, default), ``"least"``, ``"round_robin"`` or ``"random"``.
        max_attempts: replicas tried per request when connecting fails (see ``proxy``).
        replica_cooldown_s: a replica that refused a connection is avoided for this long.
        connect_timeout_s: TCP connect timeout to a replica; counts as a connect failure.
        response_timeout_s: time allowed for a replica's response headers; then 504.
        pool_max_idle_per_upstream: idle keep-alive connections kept per replica.
        pool_idle_timeout_s: an idle connection older than this is not reused; keep it below
            the replicas' keep-alive timeout (uvicorn's default is 5 s).
        auth_cache_ttl_s: how long a token's principal is used, from the start of its
            look-up (refreshed in the background after half of it, see ``tokens``);
            revocation takes effect within this time (or at once through
            ``Gateway.invalidate_tokens``).
        auth_negative_ttl_s: how long an unknown token is remembered as unknown.
        route_cache_ttl_s: how long a resolved route is cached; 0 disables the cache.
        wake_timeout_s: how long a request is held while a scaled-to-zero deployment starts.
        wake_poll_s: interval between route re-resolutions while holding.
        stats_window_s: window of the request rate reported in ``DeploymentStats``.
        usage_scan_bytes: bytes kept from each end of a JSON response (and from the end of
            a stream) to find its ``usage`` object.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    balancer: str = "p2c"
    max_attempts: int = 3
    replica_cooldown_s: float = 2.0
    connect_timeout_s: float = 3.0
    response_timeout_s: float = 600.0
    pool_max_idle_per_upstream: int = 256
    pool_idle_timeout_s: float = 4.0
    auth_cache_ttl_s: float = 10.0
    auth_negative_ttl_s: float = 1.0
    route_cache_ttl_s: float = 1.0
    wake_timeout_s: float = 120.0
    wake_poll_s: float = 0.25
    stats_window_s: int = 60
    usage_scan_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if self.rate_limit_per_s is not None and self.rate_limit_per_s <= 0:
            raise ValueError("rate_limit_per_s must be positive or None")
        if self.rate_limit_burst is not None and self.rate_limit_burst < 1:
            raise ValueError("rate_limit_burst must be at least 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.stats_window_s < 1:
            raise ValueError("stats_window_s must be at least 1")
