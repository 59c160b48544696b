"""``client.metrics``: the metrics history (fixed-resolution time series)."""

from __future__ import annotations

from neocloud.models.metrics import DeploymentSeries, MetricsSize, NodeSeries
from neocloud.sdk._http import HttpApi


class Metrics:
    """Per-deployment traffic and per-node allocation, 10-second buckets for a day and
    5-minute buckets for a month."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def deployment(self, name: str, *, window_s: int = 3600,
                   resolution_s: int | None = None) -> DeploymentSeries:
        """Requests, errors, tokens and latency p50/p99 of ``name`` over ``window_s``."""
        return self._api.get_model(DeploymentSeries, f"/metrics/deployments/{name}", params={
            "window_s": window_s, "resolution_s": resolution_s})

    def nodes(self, *, window_s: int = 3600, resolution_s: int | None = None,
              node: str | None = None) -> list[NodeSeries]:
        """GPUs and CPU allocated per node over ``window_s``."""
        return self._api.get_list(NodeSeries, "/metrics/nodes", params={
            "window_s": window_s, "resolution_s": resolution_s, "node": node})

    def size(self) -> MetricsSize:
        """Rows the history holds per series and resolution (operators)."""
        return self._api.get_model(MetricsSize, "/metrics/size")
