"""Metrics history on the wire: fixed-resolution time series of deployments and nodes."""

from __future__ import annotations

from neocloud.models.common import OutModel


class DeploymentPoint(OutModel):
    """One bucket of a deployment's gateway traffic.

    ``t`` is the bucket start (unix seconds); counts are over the bucket; latencies are
    estimated from the bucket's latency histogram (milliseconds, ``None`` without requests).
    """

    t: int
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    request_rate_per_s: float
    tokens_per_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None


class DeploymentSeries(OutModel):
    deployment: str
    resolution_s: int
    start: int
    end: int
    points: list[DeploymentPoint]


class NodePoint(OutModel):
    """One bucket of a node's allocation: the average of the samples in it."""

    t: int
    gpus: float
    gpus_allocated: float
    cpu_milli: float
    cpu_allocated_milli: float


class NodeSeries(OutModel):
    node: str
    pool: str | None
    resolution_s: int
    start: int
    end: int
    points: list[NodePoint]


class MetricsSize(OutModel):
    """Rows of the metrics history per resolution (it is bounded, see ``metrics_history``)."""

    rows: dict[str, int]
