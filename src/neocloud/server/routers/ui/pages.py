"""The console's pages (server-rendered HTML) and its login and logout."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import NotFound, PermissionDenied
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
from neocloud.server.routers.ui.common import (
    COOKIE,
    ConsoleCaller,
    is_operator,
    one_workspace,
    page,
    router,
    scope_of,
    templates,
)
from neocloud.server.services import audit as audit_svc
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
from neocloud.server.services import usage as usage_svc
from neocloud.server.services import volumes as volume_svc
from neocloud.server.services import workspaces as ws_svc


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
        deps = [(w.name, d) for w in scope_of(s, c, ws)
                for d in dep_svc.list_deployments(s, workspace_id=w.id)]
        now = time.time()
        rows = [(wsname, dep_svc.deployment_out(s, d), _recent_rate(s, d.id, now))
                for wsname, d in deps]
        return page(request, "deployments.html", c, s, rows=rows, rate_window_s=RATE_WINDOW_S)


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
        w = one_workspace(s, c, ws)
        dep = dep_svc.get_deployment(s, workspace_id=w.id, name=name)
        evs = event_svc.list_events(s, workspace_id=w.id, kind="deployment", name=name,
                                    limit=30)
        return page(request, "deployment.html", c, s, d=dep_svc.deployment_out(s, dep),
                     wsname=w.name, events=list(reversed(evs)),
                     chat=dep.service != "embeddings")


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, c: ConsoleCaller, state: StateDep,
              ws: str | None = None) -> HTMLResponse:
    with state.db.session() as s:
        rows = [(w.name, job_svc.job_out(s, j)) for w in scope_of(s, c, ws)
                for j in job_svc.list_jobs(s, workspace_id=w.id)]
        return page(request, "jobs.html", c, s, rows=rows)


@router.get("/jobs/{name}", response_class=HTMLResponse)
def job_page(request: Request, name: str, c: ConsoleCaller, state: StateDep,
             ws: str | None = None) -> HTMLResponse:
    """One job: status and reason, its workers (rank, node, status, exit code) in every
    attempt, the latest attempt first, its events and each worker's log (following)."""
    with state.db.session() as s:
        w = one_workspace(s, c, ws)
        job = job_svc.get_job(s, workspace_id=w.id, name=name)
        nodes = {n.id: n.name for n in s.scalars(select(Node))}
        attempts = [(k, [{"rank": x.rank, "status": x.status,
                          "node": nodes.get(x.node_id or "", "-"), "exit_code": x.exit_code,
                          "gpus": list(x.gpu_indices), "started_at": x.started_at,
                          "finished_at": x.finished_at}
                         for x in job_svc.workers_of(s, job, attempt=k)])
                    for k in range(job.attempt, 0, -1)]
        evs = event_svc.list_events(s, workspace_id=w.id, kind="job", name=name, limit=30)
        return page(request, "job.html", c, s, j=job_svc.job_out(s, job), wsname=w.name,
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
        w = one_workspace(s, c, ws)
        row = pod_svc.get_pod(s, workspace_id=w.id, name=name)
        pod = pod_svc.pod_out(s, row)
        evs = event_svc.list_events(s, workspace_id=w.id, kind="pod", name=name, limit=30)
        return page(request, "pod.html", c, s, p=pod, wsname=w.name,
                     idle_s=_idle_s(pod, datetime.now(UTC)), events=list(reversed(evs)),
                     can_start=pod_svc.can_start(row), can_stop=pod_svc.can_stop(row))


@router.get("/pods", response_class=HTMLResponse)
def pods_page(request: Request, c: ConsoleCaller, state: StateDep,
              ws: str | None = None) -> HTMLResponse:
    with state.db.session() as s:
        now = datetime.now(UTC)
        rows = [(w.name, out, _idle_s(out, now)) for w in scope_of(s, c, ws)
                for out in (pod_svc.pod_out(s, p)
                            for p in pod_svc.list_pods(s, workspace_id=w.id))]
        return page(request, "pods.html", c, s, rows=rows)


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request, c: ConsoleCaller, state: StateDep,
               ws: str | None = None) -> HTMLResponse:
    """Waiting work and why; a Workspace column only where several workspaces show (an
    operator's view of all of them)."""
    with state.db.session() as s:
        everyone = is_operator(c) and not ws
        if everyone:
            items = quota_svc.queue(s, workspace_id=None)
        else:
            items = quota_svc.queue(s, workspace_id=one_workspace(s, c, ws).id)
        return page(request, "queue.html", c, s, items=items, all_workspaces=everyone)


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
            mine = is_operator(c) or a.workspace_id == c.workspace_id
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
        return page(request, "nodes.html", c, s, pools=sorted(pools.items()),
                    default_window=3600)


@router.get("/billing", response_class=HTMLResponse)
def billing_page(request: Request, c: ConsoleCaller, state: StateDep,
                 ws: str | None = None) -> HTMLResponse:
    with state.db.session() as s:
        w = one_workspace(s, c, ws)
        inv = invoice_svc.get_invoice(s, workspace_id=w.id)
        try:
            budget = budget_svc.budget_out(s, workspace_id=w.id)
        except NotFound:
            budget = None
        running = usage_svc.unrecorded(s, workspace_id=w.id, now=datetime.now(UTC))
        return page(request, "billing.html", c, s, inv=inv, budget=budget, wsname=w.name,
                    running=running)


@router.get("/workspace", response_class=HTMLResponse)
def workspace_page(request: Request, c: ConsoleCaller, state: StateDep,
                   ws: str | None = None) -> HTMLResponse:
    """Tokens, secrets (names only), volumes and the quota of one workspace.

    An operator with "all workspaces" selected (no ``ws``) is asked to pick one for the
    tokens (``tokens`` is ``None``): listing its own workspace's there read as if they were
    every workspace's.
    """
    with state.db.session() as s:
        w = one_workspace(s, c, ws)
        tokens = None if is_operator(c) and not ws else [
            ws_svc.token_out(t, w.name) for t in ws_svc.list_tokens(s, workspace_id=w.id)]
        secrets = [secret_svc.secret_out(x) for x in secret_svc.list_secrets(s, workspace_id=w.id)]
        volumes = [volume_svc.volume_out(s, v)
                   for v in volume_svc.list_volumes(s, workspace_id=w.id)]
        quota = quota_svc.quota_out(s, workspace=w)
        return page(request, "workspace.html", c, s, tokens=tokens, secrets=secrets,
                     volumes=volumes, quota=quota, wsname=w.name)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, c: ConsoleCaller, state: StateDep) -> HTMLResponse:
    with state.db.session() as s:
        try:
            entries = audit_svc.list_entries(s, caller=c, limit=200)
            denied = None
        except PermissionDenied as exc:
            entries, denied = [], exc.message
        return page(request, "audit.html", c, s, entries=list(reversed(entries)),
                     denied=denied)
