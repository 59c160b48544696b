"""Live per-deployment statistics (for the autoscaler) and the gateway's Prometheus metrics.

The hot path only bumps plain integers; :class:`GatewayCollector` turns them into
Prometheus metric families when ``/metrics`` is scraped, so metrics cost nothing per
request beyond these counters.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from neocloud.gateway.balancing import ReplicaLoad
from neocloud.gateway.types import Upstream

#: Upper bounds (seconds) of the request latency histogram buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
)


@dataclass(frozen=True, slots=True)
class DeploymentStats:
    """A snapshot of one deployment's traffic through this gateway.

    Attributes:
        deployment_id / workspace_id / name: which deployment.
        in_flight: requests being served or held right now.
        held: of those, requests waiting for a scaled-to-zero deployment to wake.
        requests_total: requests routed since the gateway started.
        errors_total: of those, answered with a 5xx status.
        request_rate_per_s: requests per second over the last ``window_s`` seconds.
        window_s: the window of ``request_rate_per_s``, seconds.
        last_request_at: unix seconds of the latest request's arrival, ``None`` if none.
        replica_in_flight: outstanding requests per replica id (replicas of the latest route).
    """

    deployment_id: str
    workspace_id: str
    name: str
    in_flight: int
    held: int
    requests_total: int
    errors_total: int
    request_rate_per_s: float
    window_s: int
    last_request_at: float | None
    replica_in_flight: dict[str, int] = field(default_factory=dict)


class DeploymentCounters:
    """Mutable counters of one deployment (owned by the gateway's event loop)."""

    __slots__ = (
        "deployment_id", "workspace_id", "name", "in_flight", "held", "requests", "errors",
        "by_status", "buckets", "latency_sum", "ring", "ring_sec", "last_request_at",
        "upstreams",
    )

    def __init__(self, deployment_id: str, workspace_id: str, name: str, window_s: int) -> None:
        self.deployment_id = deployment_id
        self.workspace_id = workspace_id
        self.name = name
        self.in_flight = 0
        self.held = 0
        self.requests = 0
        self.errors = 0
        self.by_status: dict[int, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.ring = [0] * window_s
        self.ring_sec = [0] * window_s
        self.last_request_at: float | None = None
        self.upstreams: tuple[Upstream, ...] = ()

    def begin(self, now_unix: float) -> None:
        """A request arrived at unix time ``now_unix``."""
        self.in_flight += 1
        self.requests += 1
        self.last_request_at = now_unix
        sec = int(now_unix)
        i = sec % len(self.ring)
        if self.ring_sec[i] != sec:
            self.ring_sec[i] = sec
            self.ring[i] = 1
        else:
            self.ring[i] += 1

    def end(self, status: int, latency_s: float) -> None:
        """A request finished with ``status`` after ``latency_s`` seconds."""
        self.in_flight -= 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status >= 500:
            self.errors += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
        self.latency_sum += latency_s

    def rate(self, now_unix: float) -> float:
        """Requests per second over the ring's window ending at ``now_unix``."""
        sec = int(now_unix)
        w = len(self.ring)
        total = sum(c for c, s in zip(self.ring, self.ring_sec, strict=True) if sec - s < w)
        return total / w

    def snapshot(self, load: ReplicaLoad, now_unix: float) -> DeploymentStats:
        out = load.outstanding
        return DeploymentStats(
            deployment_id=self.deployment_id,
            workspace_id=self.workspace_id,
            name=self.name,
            in_flight=self.in_flight,
            held=self.held,
            requests_total=self.requests,
            errors_total=self.errors,
            request_rate_per_s=self.rate(now_unix),
            window_s=len(self.ring),
            last_request_at=self.last_request_at,
            replica_in_flight={u.replica_id: out.get(u.replica_id, 0) for u in self.upstreams},
        )


class GatewayStats:
    """Every deployment's counters plus gateway-wide rejection counts."""

    def __init__(self, window_s: int = 60) -> None:
        self.window_s = window_s
        self.deployments: dict[str, DeploymentCounters] = {}
        self.rejected: dict[str, int] = {}

    def counters(self, deployment_id: str, workspace_id: str, name: str) -> DeploymentCounters:
        c = self.deployments.get(deployment_id)
        if c is None:
            c = self.deployments[deployment_id] = DeploymentCounters(
                deployment_id, workspace_id, name, self.window_s
            )
        return c

    def reject(self, reason: str) -> None:
        """Count a request refused before it reached a deployment (``reason`` is a code)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class GatewayCollector:
    """Prometheus collector over a gateway's counters (register it in any registry).

    Metrics:
        neocloud_gateway_requests_total{workspace,deployment,code}: finished requests.
        neocloud_gateway_request_duration_seconds{workspace,deployment}: latency histogram.
        neocloud_gateway_in_flight_requests{workspace,deployment}: requests in progress.
        neocloud_gateway_held_requests{workspace,deployment}: requests held while waking.
        neocloud_gateway_rejected_requests_total{reason}: refused before routing.
        neocloud_gateway_idle_upstream_connections: pooled keep-alive connections.
    """

    def __init__(
        self, stats: GatewayStats, idle_connections: Callable[[], int] | None = None
    ) -> None:
        self._stats = stats
        self._idle = idle_connections

    def collect(self) -> Iterator[Metric]:
        labels = ["workspace", "deployment"]
        requests = CounterMetricFamily(
            "neocloud_gateway_requests", "Requests routed to deployments, by status code.",
            labels=[*labels, "code"],
        )
        latency = HistogramMetricFamily(
            "neocloud_gateway_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response.",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "neocloud_gateway_in_flight_requests", "Requests in progress.", labels=labels
        )
        held = GaugeMetricFamily(
            "neocloud_gateway_held_requests",
            "Requests held while a scaled-to-zero deployment starts.",
            labels=labels,
        )
        for c in list(self._stats.deployments.values()):
            lv = [c.workspace_id, c.name]
            for code, n in sorted(c.by_status.items()):
                requests.add_metric([*lv, str(code)], n)
            cum = 0
            buckets = []
            for bound, n in zip(LATENCY_BUCKETS, c.buckets, strict=False):
                cum += n
                buckets.append((repr(bound), cum))
            buckets.append(("+Inf", cum + c.buckets[-1]))
            latency.add_metric(lv, buckets, c.latency_sum)
            in_flight.add_metric(lv, c.in_flight)
            held.add_metric(lv, c.held)
        rejected = CounterMetricFamily(
            "neocloud_gateway_rejected_requests",
            "Requests refused before reaching a deployment, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(self._stats.rejected.items()):
            rejected.add_metric([reason], n)
        yield requests
        yield latency
        yield in_flight
        yield held
        yield rejected
        if self._idle is not None:
            yield GaugeMetricFamily(
                "neocloud_gateway_idle_upstream_connections",
                "Idle keep-alive connections to replicas.",
                value=self._idle(),
            )

