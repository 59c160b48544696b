"""The console's actions (scale, delete, pod start and stop) and its playground.

Actions are ``POST`` requests that must carry the ``X-Neocloud-Console`` header, which a
cross-site form cannot send, and check the caller's role again."""

from __future__ import annotations

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

from neocloud.errors import NeocloudError, NotFound, PermissionDenied
from neocloud.models import DeploymentUpdate, Role
from neocloud.server.deps import StateDep
from neocloud.server.routers.ui.common import COOKIE, ConsoleCaller, one_workspace, router
from neocloud.server.services import deployments as dep_svc
from neocloud.server.services import pods as pod_svc
from neocloud.server.services.principal import Caller


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
            dep_svc.update_deployment(s, workspace_id=one_workspace(s, c, ws).id, name=name,
                                      spec=spec)
        state.wake_reconcilers()
    except NeocloudError as exc:
        return _error(exc)
    except (ValueError, TypeError, AttributeError) as exc:
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
            dep_svc.delete_deployment(s, workspace_id=one_workspace(s, c, ws).id, name=name)
        state.wake_reconcilers()
    except NeocloudError as exc:
        return _error(exc)
    return JSONResponse({"ok": True})


@router.post("/actions/pods/{name}/{verb}")
def pod_action(request: Request, name: str, verb: str, c: ConsoleCaller, state: StateDep,
               ws: str | None = None) -> JSONResponse:
    """``start`` or ``stop`` a pod (members and admins; viewers get 403; the action its
    state does not allow is a 409, as through the API)."""
    try:
        _action(request, c)
        if verb not in ("start", "stop"):
            raise NotFound(f"no pod action {verb!r} (start, stop)", param="verb")
        with state.db.session() as s:
            wid = one_workspace(s, c, ws).id
            if verb == "start":
                pod = pod_svc.start_pod(s, workspace_id=wid, name=name)
            else:
                pod = pod_svc.stop_pod(s, workspace_id=wid, name=name, strict=True)
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
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("the body is not a JSON object")
        max_tokens = int(body.get("max_tokens", 64))
    except (ValueError, TypeError) as exc:
        return JSONResponse({"error": {"message": f"bad playground request: {exc}",
                                       "type": "invalid_request_error", "param": "max_tokens",
                                       "code": "validation_failed"}}, status_code=422)
    text = str(body.get("input", ""))[:20_000]
    if body.get("kind") == "embeddings":
        path, payload = "/v1/embeddings", {"model": name, "input": text}
    else:
        path, payload = "/v1/chat/completions", {
            "model": name, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens}
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
