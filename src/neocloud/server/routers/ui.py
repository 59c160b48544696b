"""The web console at ``/ui``: server-rendered pages over the same services as the REST API.

Login takes an API token and keeps it in a cookie marked ``HttpOnly`` (page scripts never
see it) and ``SameSite=Strict`` (no other site can make the browser send it); each request
authenticates it exactly like a bearer token. Who sees what follows the API: an operator
(admin of an operator workspace) sees every workspace and may narrow the pages to one with
``?ws=NAME``; anyone else sees their own workspace only, and a viewer gets no control that
changes anything (the actions check the role again). Actions are ``POST`` requests that
must carry the ``X-Neocloud-Console`` header, which a cross-site form cannot send.

Live data: pages poll small JSON (``/ui/data/...``) and HTML fragments (``?fragment=1``)
with ``web/static/console.js``; charts are drawn by the vendored uPlot.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

import neocloud.web
from neocloud.errors import NeocloudError, NotFound, PermissionDenied
from neocloud.models import DeploymentUpdate, Role
from neocloud.models.billing import MICROS_PER_USD
from neocloud.server.backends.base import tail_file
from neocloud.server.db.tables import (
    Allocation,
    Deployment,
    Job,
    JobWorker,
    Node,
    Pod,
    Replica,
    Workspace,
)
from neocloud.server.deps import StateDep
from neocloud.server.services import budgets as budget_svc
from neocloud.server.services import deployments as dep_svc
from neocloud.server.services import events as event_svc
from neocloud.server.services import invoices as invoice_svc
from neocloud.server.services import jobs as job_svc
from neocloud.server.services import metrics_history as mh
from neocloud.server.services import nodes as node_svc
from neocloud.server.services import pods as pod_svc
from neocloud.server.services import quotas as quota_svc
from neocloud.server.services import secrets as secret_svc
from neocloud.server.services import volumes as volume_svc
from neocloud.server.services import workspaces as ws_svc
from neocloud.server.services.principal import Caller

COOKIE = "neocloud_console"
WEB = Path(neocloud.web.__file__).parent
templates = Jinja2Templates(directory=str(WEB / "templates"))
router = APIRouter(prefix="/ui", include_in_schema=False)
static = StaticFiles(directory=str(WEB / "static"))


class LoginRequired(Exception):
    """No valid console cookie: the page redirects to the login form."""


def _caller(request: Request, state: StateDep) -> Caller:
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired()
    with state.db.session() as s:
        caller = ws_svc.authenticate(s, secret=token)
    if caller is None:
        raise LoginRequired()
    return caller


ConsoleCaller = Annotated[Caller, Depends(_caller)]


def _is_operator(c: Caller) -> bool:
    return c.operator and c.role is Role.admin


def _scope(s: Session, c: Caller, ws: str | None) -> list[Workspace]:
    """The workspaces a page shows: the caller's own; for operators every one, or ``ws``."""
    if not _is_operator(c):
        own = s.get(Workspace, c.workspace_id)
        assert own is not None
        return [own]
    rows = list(s.scalars(select(Workspace).order_by(Workspace.name)))
    return [w for w in rows if w.name == ws] if ws else rows


def _one(s: Session, c: Caller, ws: str | None) -> Workspace:
    """The single workspace a detail page is about (the caller's own unless an operator
    names another)."""
    if ws and ws != c.workspace_name:
        if not _is_operator(c):
            raise NotFound(f"workspace {ws!r} not found", param="ws")
        return ws_svc.get_workspace(s, name=ws)
    own = s.get(Workspace, c.workspace_id)
    assert own is not None
    return own


def _banner(s: Session, ws_id: str) -> dict[str, Any] | None:
    try:
        b = budget_svc.budget_out(s, workspace_id=ws_id)
    except NotFound:
        return None
    if not b.crossed:
        return None
    return {"percent": b.percent, "status": b.status.value, "refusing": b.refusing,
            "spent": b.spent_micros / MICROS_PER_USD, "amount": b.monthly_micros / MICROS_PER_USD}


def _page(request: Request, name: str, c: Caller, s: Session, **ctx: Any) -> HTMLResponse:
    workspaces = [w.name for w in s.scalars(select(Workspace).order_by(Workspace.name))] \
        if _is_operator(c) else []
    ctx.update(caller=c, can_edit=c.role is not Role.viewer, operator=_is_operator(c),
               workspaces=workspaces, ws=request.query_params.get("ws") or "",
               banner=_banner(s, c.workspace_id), now=datetime.now(UTC),
               fragment=bool(request.query_params.get("fragment")))
    return templates.TemplateResponse(request, name, ctx)


def install(app: Any) -> None:
    """Add the console to the FastAPI app: its pages, static files and login redirect."""
    app.include_router(router)
    app.mount("/ui/static", static, name="ui-static")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/ui/login?next={request.url.path}", status_code=303)


# -- login -------------------------------------------------------------------------------

@router.get("", response_class=RedirectResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/ui/deployments", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, error: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"error": error})


@router.post("/login")
async def login(request: Request, state: StateDep) -> Any:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    with state.db.session() as s:
        caller = ws_svc.authenticate(s, secret=token) if token else None
    if caller is None:
        return templates.TemplateResponse(request, "login.html",
                                          {"error": "invalid API token"}, status_code=401)
    nxt = (form.get("next") or ["/ui/deployments"])[0]
    if not nxt.startswith("/ui/") or nxt.startswith("//"):
        nxt = "/ui/deployments"
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                    secure=request.url.scheme == "https", max_age=12 * 3600)
    return resp


@router.post("/logout")
def logout() -> RedirectResponse:
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


# -- pages -------------------------------------------------------------------------------

@router.get("/deployments", response_class=HTMLResponse)
def deployments_page(request: Request, c: ConsoleCaller, state: StateDep,
                     ws: str | None = None) -> HTMLResponse:
    with state.db.session() as s:
        deps = [(w.name, d) for w in _scope(s, c, ws)
                for d in dep_svc.list_deployments(s, workspace_id=w.id)]
        now = time.time()
        rows = [(wsname, dep_svc.deployment_out(s, d), _recent_rate(s, d.id, now))
                for wsname, d in deps]
        return _page(request, "deployments.html", c, s, rows=rows, rate_window_s=RATE_WINDOW_S)


#: The deployments list shows each deployment's request rate over this many seconds.
RATE_WINDOW_S = 60


def _recent_rate(s: Session, deployment_id: str, now: float) -> float:
    """Requests per second of a deployment over about the last :data:`RATE_WINDOW_S`
    seconds, from the metrics history (the series the detail charts draw): the requests of
    the 10-second buckets that start in the window, over the seconds from the first
    bucket's start to ``now`` (so the bucket still filling counts for its elapsed part)."""
    res = mh.FINE
    start = (int(now) // res) * res - (RATE_WINDOW_S - res)
    pts = mh.deployment_points(s, deployment_id=deployment_id, start=start,
                               end=int(now) + 1, resolution_s=res)
    return sum(p.requests for p in pts) / max(1.0, now - start)


@router.get("/deployments/{name}", response_class=HTMLResponse)
def deployment_page(request: Request, name: str, c: ConsoleCaller, state: StateDep,
                    ws: str | None = None) -> HTMLResponse:
    with state.db.session() as s:
        w = _one(s, c, ws)
        dep = dep_svc.get_deployment(s, workspace_id=w.id, name=name)
        evs = event_svc.list_events(s, workspace_id=w.id, kind="deployment", name=name,
                                    limit=30)
        return _page(request, "deployment.html", c, s, d=dep_svc.deployment_out(s, dep),
                     wsname=w.name, events=list(reversed(evs)),
                     chat=dep.service != "embeddings")


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, c: ConsoleCaller, state: StateDep,
              ws: str | None = None) -> HTMLResponse:
    with state.db.session() as s:
        rows = [(w.name, job_svc.job_out(s, j)) for w in _scope(s, c, ws)
                for j in job_svc.list_jobs(s, workspace_id=w.id)]
        return _page(request, "jobs.html", c, s, rows=rows)


@router.get("/jobs/{name}", response_class=HTMLResponse)
def job_page(request: Request, name: str, c: ConsoleCaller, state: StateDep,
             ws: str | None = None) -> HTMLResponse:
    """One job: status and reason, its workers (rank, node, status, exit code) in every
    attempt, the latest attempt first, its events and each worker's log (following)."""
    with state.db.session() as s:
        w = _one(s, c, ws)
        job = job_svc.get_job(s, workspace_id=w.id, name=name)
        nodes = {n.id: n.name for n in s.scalars(select(Node))}
        attempts = [(k, [{"rank": x.rank, "status": x.status,
                          "node": nodes.get(x.node_id or "", "-"), "exit_code": x.exit_code,
                          "gpus": list(x.gpu_indices), "started_at": x.started_at,
                          "finished_at": x.finished_at}
                         for x in job_svc.workers_of(s, job, attempt=k)])
                    for k in range(job.attempt, 0, -1)]
        evs = event_svc.list_events(s, workspace_id=w.id, kind="job", name=name, limit=30)
        return _page(request, "job.html", c, s, j=job_svc.job_out(s, job), wsname=w.name,
                     attempts=attempts, events=list(reversed(evs)))


def _idle_s(p: Any, now: datetime) -> float | None:
    """Seconds since the pod's last SSH or shell session (or since it started)."""
    since = p.last_activity_at or p.started_at
    if p.status.value != "running" or since is None:
        return None
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return max(0.0, (now - since).total_seconds())


@router.get("/pods/{name}", response_class=HTMLResponse)
def pod_page(request: Request, name: str, c: ConsoleCaller, state: StateDep,
             ws: str | None = None) -> HTMLResponse:
    """One pod: state and reason, SSH command, idle time against its idle timeout, events,
    and start/stop controls for members and admins."""
    with state.db.session() as s:
        w = _one(s, c, ws)
        pod = pod_svc.pod_out(s, pod_svc.get_pod(s, workspace_id=w.id, name=name))
        evs = event_svc.list_events(s, workspace_id=w.id, kind="pod", name=name, limit=30)
        return _page(request, "pod.html", c, s, p=pod, wsname=w.name,
                     idle_s=_idle_s(pod, datetime.now(UTC)), events=list(reversed(evs)))


@router.get("/pods", response_class=HTMLResponse)
def pods_page(request: Request, c: ConsoleCaller, state: StateDep,
              ws: str | None = None) -> HTMLResponse:
    with state.db.session() as s:
        now = datetime.now(UTC)
        rows = [(w.name, out, _idle_s(out, now)) for w in _scope(s, c, ws)
                for out in (pod_svc.pod_out(s, p)
                            for p in pod_svc.list_pods(s, workspace_id=w.id))]
        return _page(request, "pods.html", c, s, rows=rows)


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request, c: ConsoleCaller, state: StateDep,
               ws: str | None = None) -> HTMLResponse:
    with state.db.session() as s:
        if _is_operator(c) and not ws:
            items = quota_svc.queue(s, workspace_id=None)
        else:
            items = quota_svc.queue(s, workspace_id=_one(s, c, ws).id)
        return _page(request, "queue.html", c, s, items=items)


def _owner_names(s: Session, allocs: list[Allocation]) -> dict[str, str]:
    ids = [a.owner_id for a in allocs]
    out: dict[str, str] = {}
    for rid, dname in s.execute(select(Replica.id, Deployment.name).join(
            Deployment, Deployment.id == Replica.deployment_id).where(Replica.id.in_(ids))):
        out[rid] = dname
    for wid, jname, rank in s.execute(select(JobWorker.id, Job.name, JobWorker.rank).join(
            Job, Job.id == JobWorker.job_id).where(JobWorker.id.in_(ids))):
        out[wid] = f"{jname}/{rank}"
    for pid, pname in s.execute(select(Pod.id, Pod.name).where(Pod.id.in_(ids))):
        out[pid] = pname
    return out


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(request: Request, c: ConsoleCaller, state: StateDep) -> HTMLResponse:
    """Nodes by pool with one cell per GPU; other workspaces' work shows as ``in use``."""
    with state.db.session() as s:
        allocs = list(s.scalars(select(Allocation)))
        names = _owner_names(s, allocs)
        ws_names = {w.id: w.name for w in s.scalars(select(Workspace))}
        by_gpu: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for a in allocs:
            mine = _is_operator(c) or a.workspace_id == c.workspace_id
            label = (f"{ws_names.get(a.workspace_id, '?')}/{names.get(a.owner_id, a.kind)}"
                     if mine else "in use")
            for i in a.gpu_indices or []:
                by_gpu.setdefault((a.node_id, int(i)), []).append(
                    {"label": label, "milli": a.gpu_milli, "mine": mine})
        pools: dict[str, list[dict[str, Any]]] = {}
        for n in node_svc.list_nodes(s):
            out = node_svc.node_out(s, n)
            gpus = [{"index": g.index, "type": g.type, "users": by_gpu.get((n.id, g.index), []),
                     "milli": sum(u["milli"] for u in by_gpu.get((n.id, g.index), []))}
                    for g in out.gpus]
            pools.setdefault(n.pool or "default", []).append({"node": out, "gpus": gpus})
        return _page(request, "nodes.html", c, s, pools=sorted(pools.items()))


@router.get("/billing", response_class=HTMLResponse)
def billing_page(request: Request, c: ConsoleCaller, state: StateDep,
                 ws: str | None = None) -> HTMLResponse:
    with state.db.session() as s:
        w = _one(s, c, ws)
        inv = invoice_svc.get_invoice(s, workspace_id=w.id)
        try:
            budget = budget_svc.budget_out(s, workspace_id=w.id)
        except NotFound:
            budget = None
        return _page(request, "billing.html", c, s, inv=inv, budget=budget, wsname=w.name)


@router.get("/workspace", response_class=HTMLResponse)
def workspace_page(request: Request, c: ConsoleCaller, state: StateDep,
                   ws: str | None = None) -> HTMLResponse:
    """Tokens, secrets (names only), volumes and the quota of one workspace."""
    with state.db.session() as s:
        w = _one(s, c, ws)
        tokens = [ws_svc.token_out(t, w.name) for t in ws_svc.list_tokens(s, workspace_id=w.id)]
        secrets = [secret_svc.secret_out(x) for x in secret_svc.list_secrets(s, workspace_id=w.id)]
        volumes = [volume_svc.volume_out(s, v)
                   for v in volume_svc.list_volumes(s, workspace_id=w.id)]
        quota = quota_svc.quota_out(s, workspace=w)
        return _page(request, "workspace.html", c, s, tokens=tokens, secrets=secrets,
                     volumes=volumes, quota=quota, wsname=w.name)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, c: ConsoleCaller, state: StateDep) -> HTMLResponse:
    from neocloud.server.services import audit as audit_svc

    with state.db.session() as s:
        try:
            entries = audit_svc.list_entries(s, caller=c, limit=200)
            denied = None
        except PermissionDenied as exc:
            entries, denied = [], exc.message
        return _page(request, "audit.html", c, s, entries=list(reversed(entries)),
                     denied=denied)


# -- live data -----------------------------------------------------------------------------

@router.get("/data/deployments/{name}")
def deployment_data(name: str, c: ConsoleCaller, state: StateDep, ws: str | None = None,
                    window_s: int = 900) -> JSONResponse:
    """Chart series of a deployment: ``t`` and one array per metric (``null`` = no data)."""
    window_s = max(60, min(window_s, 31 * 86400))
    with state.db.session() as s:
        w = _one(s, c, ws)
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
        w = _one(s, c, ws)
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
    """The last ``tail`` lines of a deployment's replicas or a job's workers of its current
    attempt (only the worker of ``rank`` when given); secret values the workload references
    are shown as ``***``."""
    tail = max(1, min(tail, 5000))
    with state.db.session() as s:
        w = _one(s, c, ws)
        if kind == "deployments":
            row: Any = dep_svc.get_deployment(s, workspace_id=w.id, name=name)
            paths = [Path(r.handle["log_path"]) for r in s.scalars(
                select(Replica).where(Replica.deployment_id == row.id)
                .order_by(Replica.created_at)) if (r.handle or {}).get("log_path")]
        elif kind == "jobs":
            row = job_svc.get_job(s, workspace_id=w.id, name=name)
            paths = [Path(x.log_path) for x in job_svc.workers_of(s, row)
                     if x.log_path and (rank is None or x.rank == rank)]
        else:
            raise NotFound(f"no logs for {kind!r}", param="kind")
        values = secret_svc.values_of(s, workspace_id=w.id, refs=dict(row.secrets or {}),
                                      box=state.secret_box)
    text = "\n".join(tail_file(p, tail) for p in paths[-4:])
    return PlainTextResponse(secret_svc.redact(text, values))


# -- actions -------------------------------------------------------------------------------

def _action(request: Request, c: Caller) -> None:
    if request.headers.get("x-neocloud-console") != "1":
        raise PermissionDenied("console actions must come from the console's own page")
    c.require(Role.member)


def _error(exc: NeocloudError) -> JSONResponse:
    return JSONResponse(exc.to_wire(), status_code=exc.status)


@router.post("/actions/deployments/{name}/scale")
async def scale(request: Request, name: str, c: ConsoleCaller, state: StateDep,
                ws: str | None = None) -> JSONResponse:
    try:
        _action(request, c)
        body = await request.json()
        spec = DeploymentUpdate(replicas=int(body.get("replicas", -1)))
        with state.db.session() as s:
            dep_svc.update_deployment(s, workspace_id=_one(s, c, ws).id, name=name, spec=spec)
        state.wake_reconcilers()
    except NeocloudError as exc:
        return _error(exc)
    except (ValueError, TypeError) as exc:
        return JSONResponse({"error": {"message": f"bad replicas: {exc}", "type":
                                       "invalid_request_error", "param": "replicas",
                                       "code": "validation_failed"}}, status_code=422)
    return JSONResponse({"ok": True})


@router.post("/actions/deployments/{name}/delete")
def delete(request: Request, name: str, c: ConsoleCaller, state: StateDep,
           ws: str | None = None) -> JSONResponse:
    try:
        _action(request, c)
        with state.db.session() as s:
            dep_svc.delete_deployment(s, workspace_id=_one(s, c, ws).id, name=name)
        state.wake_reconcilers()
    except NeocloudError as exc:
        return _error(exc)
    return JSONResponse({"ok": True})


@router.post("/actions/pods/{name}/{verb}")
def pod_action(request: Request, name: str, verb: str, c: ConsoleCaller, state: StateDep,
               ws: str | None = None) -> JSONResponse:
    """``start`` or ``stop`` a pod (members and admins; viewers get 403)."""
    try:
        _action(request, c)
        if verb not in ("start", "stop"):
            raise NotFound(f"no pod action {verb!r} (start, stop)", param="verb")
        with state.db.session() as s:
            wid = _one(s, c, ws).id
            pod = (pod_svc.start_pod if verb == "start" else pod_svc.stop_pod)(
                s, workspace_id=wid, name=name)
            status = pod.status
        state.wake_reconcilers()
    except NeocloudError as exc:
        return _error(exc)
    return JSONResponse({"ok": True, "status": str(status)})


@router.post("/playground/{name}")
async def playground(request: Request, name: str, c: ConsoleCaller,
                     state: StateDep) -> JSONResponse:
    """Send one chat message or embeddings input to a deployment through the gateway (with
    the caller's own token, so auth, budgets, metering and metrics apply as for any
    client); viewers may call endpoints too, as through the gateway."""
    if request.headers.get("x-neocloud-console") != "1":
        return _error(PermissionDenied("console actions must come from the console's page"))
    body = await request.json()
    text = str(body.get("input", ""))[:20_000]
    if body.get("kind") == "embeddings":
        path, payload = "/v1/embeddings", {"model": name, "input": text}
    else:
        path, payload = "/v1/chat/completions", {
            "model": name, "messages": [{"role": "user", "content": text}],
            "max_tokens": int(body.get("max_tokens", 64))}
    token = request.cookies.get(COOKIE, "")
    transport = httpx.ASGITransport(app=state.gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://console",
                                 timeout=120) as client:
        r = await client.post(path, json=payload, headers={"Authorization": f"Bearer {token}"})
    try:
        data = r.json()
    except ValueError:
        data = {"error": {"message": r.text[:500]}}
    if r.status_code == 200 and path == "/v1/embeddings":
        vec = data["data"][0]["embedding"]
        data = {"dims": len(vec), "head": vec[:8], "usage": data.get("usage")}
    elif r.status_code == 200:
        data = {"text": data["choices"][0]["message"]["content"], "usage": data.get("usage")}
    return JSONResponse(data, status_code=r.status_code)

