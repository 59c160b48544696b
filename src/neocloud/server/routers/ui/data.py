"""The small JSON and text the console's pages poll: chart series and following logs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import select

from neocloud.errors import NotFound
from neocloud.models.billing import MICROS_PER_USD
from neocloud.server.db.tables import Node
from neocloud.server.deps import StateDep
from neocloud.server.routers.ui.common import ConsoleCaller, one_workspace, router
from neocloud.server.services import deployments as dep_svc
from neocloud.server.services import invoices as invoice_svc
from neocloud.server.services import logs as log_svc
from neocloud.server.services import metrics_history as mh


@router.get("/data/deployments/{name}")
def deployment_data(name: str, c: ConsoleCaller, state: StateDep, ws: str | None = None,
                    window_s: int = 900) -> JSONResponse:
    """Chart series of a deployment: ``t`` and one array per metric (``null`` = no data)."""
    window_s = max(60, min(window_s, 31 * 86400))
    with state.db.session() as s:
        w = one_workspace(s, c, ws)
        dep = dep_svc.get_deployment(s, workspace_id=w.id, name=name)
        res = mh.resolution_for(window_s)
        end = int(time.time()) + 1
        pts = mh.deployment_points(s, deployment_id=dep.id, start=end - window_s, end=end,
                                   resolution_s=res)
        out = dep_svc.deployment_out(s, dep)
    return JSONResponse({
        "resolution_s": res, "t": [p.t for p in pts],
        "rps": [p.request_rate_per_s for p in pts], "tps": [p.tokens_per_s for p in pts],
        "errors": [p.errors for p in pts], "p50": [p.latency_p50_ms for p in pts],
        "p99": [p.latency_p99_ms for p in pts],
        "status": out.status.value, "ready": out.ready_replicas, "replicas": out.replicas})


@router.get("/data/nodes")
def nodes_data(c: ConsoleCaller, state: StateDep, window_s: int = 3600) -> JSONResponse:
    """GPU allocation of the fleet over time (sum over nodes per bucket)."""
    window_s = max(60, min(window_s, 31 * 86400))
    res = mh.resolution_for(window_s)
    end = int(time.time()) + 1
    total: dict[int, list[float]] = {}
    with state.db.session() as s:
        for n in s.scalars(select(Node)):
            for p in mh.node_points(s, node_id=n.id, start=end - window_s, end=end,
                                    resolution_s=res):
                acc = total.setdefault(p.t, [0.0, 0.0])
                acc[0] += p.gpus_allocated
                acc[1] += p.gpus
    ts = sorted(total)
    return JSONResponse({"t": ts, "allocated": [total[t][0] for t in ts],
                         "gpus": [total[t][1] for t in ts]})


@router.get("/data/spend")
def spend_data(c: ConsoleCaller, state: StateDep, ws: str | None = None) -> JSONResponse:
    """This month's spend per day (USD), by kind: GPU/CPU time, tokens, storage (``null``
    for the days still ahead, so the chart spans the whole month)."""
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    n_days = ((start + timedelta(days=32)).replace(day=1) - start).days
    days = [(start + timedelta(days=i)) for i in range(n_days)]
    series: dict[str, list[float | None]] = {"time": [], "tokens": [], "storage": []}
    with state.db.session() as s:
        w = one_workspace(s, c, ws)
        for d in days:
            if d > now:
                for v in series.values():
                    v.append(None)
                continue
            inv = invoice_svc.get_invoice(s, workspace_id=w.id, period=d.strftime("%Y-%m-%d"),
                                          now=now)
            sums = {"time": 0, "tokens": 0, "storage": 0}
            for ln in inv.lines:
                k = ("tokens" if ln.meter.value.endswith("_tokens") else
                     "storage" if ln.meter.value.startswith("storage") else "time")
                sums[k] += ln.amount_micros
            for k, v in sums.items():
                series[k].append(v / MICROS_PER_USD)
    return JSONResponse({"t": [int(d.timestamp()) for d in days], **series})


@router.get("/data/logs/{kind}/{name}", response_class=PlainTextResponse)
def logs_data(kind: str, name: str, c: ConsoleCaller, state: StateDep, ws: str | None = None,
              tail: int = 200, rank: int | None = None) -> PlainTextResponse:
    """The last ``tail`` lines of each of a deployment's replicas, or of a job's workers of
    its current attempt (only the worker of ``rank`` when given), read through the backend
    that ran them (as ``GET .../logs`` does); secret and sensitive values the workload
    references are shown as ``***``.

    Raises:
        NotFound: no such deployment, job or worker, or ``kind`` is neither.
    """
    tail = max(1, min(tail, 5000))
    with state.db.session() as s:
        w = one_workspace(s, c, ws)
        if kind == "deployments":
            text = log_svc.deployment_logs(s, backends=state.backends, box=state.secret_box,
                                           workspace_id=w.id, name=name, tail=tail)
        elif kind == "jobs":
            text = log_svc.job_logs(s, backends=state.backends, box=state.secret_box,
                                    workspace_id=w.id, name=name, worker=rank, tail=tail)
        else:
            raise NotFound(f"no logs for {kind!r}", param="kind")
    return PlainTextResponse(text)
