"""Metrics history: time series of a deployment's traffic and of nodes' allocation."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query
from sqlalchemy import select

from neocloud.errors import InvalidRequest, NotFound
from neocloud.models import Page
from neocloud.models.metrics import DeploymentSeries, MetricsSize, NodeSeries
from neocloud.server.db.tables import Node
from neocloud.server.deps import CallerDep, SessionDep
from neocloud.server.services import deployments as dep_svc
from neocloud.server.services import metrics_history as svc

router = APIRouter(tags=["metrics"])

_WINDOW = Query(3600, ge=10, le=31 * 86_400, description="seconds back from now")
_RESOLUTION = Query(None, description="bucket seconds (default: chosen from the window)",
                    json_schema_extra={"enum": sorted(svc.RESOLUTIONS)})


def _resolution(window_s: int, resolution_s: int | None) -> int:
    res = resolution_s or svc.resolution_for(window_s)
    if res not in svc.RESOLUTIONS:
        raise InvalidRequest(f"resolution_s must be one of {sorted(svc.RESOLUTIONS)}",
                             param="resolution_s")
    if window_s > svc.RESOLUTIONS[res]:
        raise InvalidRequest(f"{res}-second buckets are kept for {svc.RESOLUTIONS[res]} s; "
                             "ask a shorter window or a coarser resolution",
                             param="window_s")
    return res


@router.get("/metrics/deployments/{name}", response_model=DeploymentSeries)
def deployment_series(name: str, caller: CallerDep, s: SessionDep, window_s: int = _WINDOW,
                      resolution_s: int | None = _RESOLUTION) -> DeploymentSeries:
    """Requests, errors, tokens and latency p50/p99 of every bucket of the last
    ``window_s`` (zeros and ``null`` latencies where there were no requests), up to the
    start of the bucket still open (``end``), which is left out (see
    ``metrics_history.deployment_points``)."""
    dep = dep_svc.get_deployment(s, workspace_id=caller.workspace_id, name=name)
    res = _resolution(window_s, resolution_s)
    start, end = svc.window(time.time(), window_s, res)
    pts = svc.deployment_points(s, deployment_id=dep.id, start=start, end=end,
                                resolution_s=res)
    return DeploymentSeries(deployment=name, resolution_s=res, start=start, end=end,
                            points=pts)


@router.get("/metrics/nodes", response_model=Page[NodeSeries])
def node_series(caller: CallerDep, s: SessionDep, window_s: int = _WINDOW,
                resolution_s: int | None = _RESOLUTION,
                node: str | None = None) -> Page[NodeSeries]:
    """GPUs and CPU allocated per node (averaged per bucket) over the last ``window_s``."""
    res = _resolution(window_s, resolution_s)
    end = int(time.time()) + 1
    start = end - window_s
    q = select(Node).order_by(Node.name)
    if node is not None:
        q = q.where(Node.name == node)
    nodes = list(s.scalars(q))
    if node is not None and not nodes:
        raise NotFound(f"node {node!r} not found", param="node")
    return Page(data=[NodeSeries(node=n.name, pool=n.pool, resolution_s=res, start=start,
                                 end=end, points=svc.node_points(
                                     s, node_id=n.id, start=start, end=end, resolution_s=res))
                      for n in nodes])


@router.get("/metrics/size", response_model=MetricsSize)
def history_size(caller: CallerDep, s: SessionDep) -> MetricsSize:
    """Rows held by the metrics history, per series and resolution (operators)."""
    caller.require_operator()
    return MetricsSize(rows=svc.size(s))
