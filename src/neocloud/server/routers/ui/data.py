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
from neocloud.server.routers.ui.common import (
    CHART_WINDOWS,
    ConsoleCaller,
    one_workspace,
    router,
)
from neocloud.server.services import deployments as dep_svc
from neocloud.server.services import invoices as invoice_svc
from neocloud.server.services import logs as log_svc
from neocloud.server.services import metrics_history as mh


def _window(window_s: int) -> tuple[int, int, int]:
    """``(resolution_s, start, end)`` of a chart of the last ``window_s`` seconds (60 s to
    31 days): the finest stored resolution that covers it, and whole closed buckets."""
    window_s = max(60, min(window_s, 31 * 86400))
    res = mh.resolution_for(window_s)
    start, end = mh.window(time.time(), window_s, res)
    return res, start, end


@router.get("/data/deployments/{name}")
def deployment_data(name: str, c: ConsoleCaller, state: StateDep, ws: str | None = None,
                    window_s: int = CHART_WINDOWS[0][0]) -> JSONResponse:
    """Chart series of a deployment over the last ``window_s`` seconds: ``t`` (every
    bucket start of the window, as ``GET /api/v1/metrics/deployments/{name}`` returns
    them) and one array per metric; ``null`` latency where a bucket had no requests.
    ``start``/``end`` are the window the x axis spans; ``empty`` says that no request
    fell in it."""
    res, start, end = _window(window_s)
    with state.db.session() as s:
        w = one_workspace(s, c, ws)
        dep = dep_svc.get_deployment(s, workspace_id=w.id, name=name)
        pts = mh.deployment_points(s, deployment_id=dep.id, start=start, end=end,
                                   resolution_s=res)
        out = dep_svc.deployment_out(s, dep)
    return JSONResponse({
        "resolution_s": res, "start": start, "end": end,
        "empty": not any(p.requests for p in pts), "t": [p.t for p in pts],
        "rps": [p.request_rate_per_s for p in pts], "tps": [p.tokens_per_s for p in pts],
        "errors": [p.errors for p in pts], "p50": [p.latency_p50_ms for p in pts],
        "p99": [p.latency_p99_ms for p in pts],
        "status": out.status.value, "ready": out.ready_replicas, "replicas": out.replicas})


@router.get("/data/nodes")
def nodes_data(c: ConsoleCaller, state: StateDep, window_s: int = 3600) -> JSONResponse:
    """GPU allocation of the fleet over the last ``window_s`` seconds: the sum over nodes
    of each bucket's mean, every bucket of the window (``null`` where no node was
    sampled: a gap, not zero)."""
    res, start, end = _window(window_s)
    total: dict[int, list[float]] = {}
    with state.db.session() as s:
        for n in s.scalars(select(Node)):
            for p in mh.node_points(s, node_id=n.id, start=start, end=end, resolution_s=res):
                acc = total.setdefault(p.t, [0.0, 0.0])
                acc[0] += p.gpus_allocated
                acc[1] += p.gpus
    ts = list(range(start, end, res))
    return JSONResponse({
        "resolution_s": res, "start": start, "end": end, "empty": not total, "t": ts,
        "allocated": [total[t][0] if t in total else None for t in ts],
        "gpus": [total[t][1] if t in total else None for t in ts]})


#: What the spend chart can split by.
SPEND_BY = ("kind", "workload")


def _spend_kind(meter: str) -> str:
    return ("tokens" if meter.endswith("_tokens") else
            "storage" if meter.startswith("storage") else "time")


@router.get("/data/spend")
def spend_data(c: ConsoleCaller, state: StateDep, ws: str | None = None,
               by: str = "kind") -> JSONResponse:
    """This month's spend per day (USD), from each day's invoice, split ``by`` kind
    (GPU/CPU time, tokens, storage) or by workload (``<kind> <name>`` of the invoice
    lines). ``series`` names the arrays of ``values``, in order; the days still ahead are
    ``null``, so the chart spans the whole month; ``start``/``end`` pad the month by half a day each
    side so that the first and last day's bars are drawn whole.

    Raises:
        NotFound: ``by`` is neither ``kind`` nor ``workload`` (``param="by"``).
    """
    if by not in SPEND_BY:
        raise NotFound(f"no spend split by {by!r}; one of {', '.join(SPEND_BY)}", param="by")
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    n_days = ((start + timedelta(days=32)).replace(day=1) - start).days
    days = [(start + timedelta(days=i)) for i in range(n_days)]
    per_day: list[dict[str, int] | None] = []
    with state.db.session() as s:
        w = one_workspace(s, c, ws)
        for d in days:
            if d > now:
                per_day.append(None)
                continue
            inv = invoice_svc.get_invoice(s, workspace_id=w.id, period=d.strftime("%Y-%m-%d"),
                                          now=now)
            sums: dict[str, int] = {}
            for ln in inv.lines:
                k = _spend_kind(ln.meter.value) if by == "kind" else f"{ln.kind} {ln.name}"
                sums[k] = sums.get(k, 0) + ln.amount_micros
            per_day.append(sums)
    if by == "kind":
        names = ["time", "tokens", "storage"]
    else:  # the workloads that cost most first
        spent: dict[str, int] = {}
        for day in per_day:
            for k, v in (day or {}).items():
                spent[k] = spent.get(k, 0) + v
        names = sorted(spent, key=lambda k: (-spent[k], k))
    series = {k: [None if day is None else day.get(k, 0) / MICROS_PER_USD
                  for day in per_day] for k in names}
    t = [int(d.timestamp()) for d in days]
    return JSONResponse({"by": by, "series": names, "values": [series[k] for k in names],
                         "t": t, "start": t[0] - 43200, "end": t[-1] + 43200,
                         "empty": not any(v for vs in series.values() for v in vs if v)})


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
