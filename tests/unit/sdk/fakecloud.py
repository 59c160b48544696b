"""An in-memory stand-in for the neocloud REST API, served through ``httpx.MockTransport``.

It follows the documented API (paths, methods, status codes, list objects, OpenAI error
objects, roles) and validates request bodies with the shared wire models, so the SDK and
the CLI can be tested without the control plane. Deployments move through their life
cycle as they are polled:

* a new deployment is ``pending``; after ``ready_after`` GETs of it, every replica is
  ``ready`` (scaled by ``PATCH``);
* service ``crash:...`` fails after ``ready_after`` GETs (status ``failed``);
* a shape with GPUs never fits (``pending`` with a pending reason, forever);
* ``DELETE`` marks it ``deleting``; the next GET or list no longer finds it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from neocloud import errors
from neocloud.models import (
    Bill,
    BillLine,
    DeploymentCreate,
    DeploymentOut,
    DeploymentUpdate,
    EventOut,
    GpuOut,
    NodeCreate,
    NodeOut,
    NodeUpdate,
    ReplicaOut,
    ShapeCreate,
    ShapeOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
    WhoAmI,
    WorkspaceCreate,
    WorkspaceOut,
)

BASE = "http://cloud.test"
ADMIN_TOKEN = "nc-admin-secret"
Handler = Callable[..., httpx.Response]


@dataclass
class _Token:
    id: str
    name: str
    role: str
    workspace: str
    created_at: datetime
    secret_hash: str

    def out(self) -> TokenOut:
        return TokenOut(
            id=self.id,
            name=self.name,
            role=self.role,
            workspace=self.workspace,
            prefix=self.id[:8],
            created_at=self.created_at,
        )


@dataclass
class _Deployment:
    out: DeploymentOut
    workspace: str
    gets: int = 0
    logs: dict[str, list[str]] = field(default_factory=dict)


def _now() -> datetime:
    return datetime.now(UTC)


class FakeCloud:
    """The fake control plane. ``transport`` is what ``Client(transport=...)`` takes."""

    def __init__(self, *, ready_after: int = 2) -> None:
        self.ready_after = ready_after
        self.ids = itertools.count(1)
        self.requests: list[httpx.Request] = []
        self.workspaces: dict[str, WorkspaceOut] = {}
        self.tokens: dict[str, _Token] = {}  # by hash of the secret
        self.deployments: dict[tuple[str, str], _Deployment] = {}
        self.events: list[tuple[str, EventOut]] = []  # (workspace, event)
        self.nodes: dict[str, NodeOut] = {}
        self.shapes: dict[str, ShapeOut] = {}
        self.log_growth = 0
        """Lines appended to each requested replica log on each logs request."""
        self.delete_after_log_requests: int | None = None
        self.log_requests = 0
        self._add_workspace("default", operator=True)
        self.add_token(ADMIN_TOKEN, "admin", "admin", "default")
        for name, cpu, mem, gpus, price in [
            ("cpu.small", 1000, 2048, 0, 0.05),
            ("cpu.large", 4000, 16384, 0, 0.2),
            ("gpu.h100x8", 64000, 1_000_000, 8, 24.0),
        ]:
            self.shapes[name] = ShapeOut(
                name=name, cpu_milli=cpu, memory_mib=mem, gpu_count=gpus, gpu_milli=0,
                gpu_type="H100" if gpus else None, price_per_hour_usd=price,
            )
        self.nodes["local"] = NodeOut(
            id="n-1", name="local", status="ready", backend="local", pool=None,
            cpu_milli=2000, memory_mib=24576, gpus=[], labels={}, created_at=_now(),
        )
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        for method, pattern, handler in [
            ("GET", r"/whoami", self.whoami),
            ("GET", r"/workspaces", self.list_workspaces),
            ("POST", r"/workspaces", self.create_workspace),
            ("POST", r"/workspaces/(?P<ws>[^/]+)/tokens", self.create_token),
            ("GET", r"/workspaces/(?P<ws>[^/]+)/tokens", self.list_tokens),
            ("GET", r"/tokens", self.list_tokens),
            ("POST", r"/tokens", self.create_token),
            ("DELETE", r"/tokens/(?P<name>[^/]+)", self.delete_token),
            ("GET", r"/nodes", self.list_nodes),
            ("POST", r"/nodes", self.create_node),
            ("GET", r"/nodes/(?P<name>[^/]+)", self.get_node),
            ("PATCH", r"/nodes/(?P<name>[^/]+)", self.update_node),
            ("DELETE", r"/nodes/(?P<name>[^/]+)", self.delete_node),
            ("GET", r"/shapes", self.list_shapes),
            ("POST", r"/shapes", self.create_shape),
            ("GET", r"/shapes/(?P<name>[^/]+)", self.get_shape),
            ("GET", r"/deployments", self.list_deployments),
            ("POST", r"/deployments", self.create_deployment),
            ("GET", r"/deployments/(?P<name>[^/]+)", self.get_deployment),
            ("PATCH", r"/deployments/(?P<name>[^/]+)", self.update_deployment),
            ("DELETE", r"/deployments/(?P<name>[^/]+)", self.delete_deployment),
            ("GET", r"/deployments/(?P<name>[^/]+)/events", self.deployment_events),
            ("GET", r"/deployments/(?P<name>[^/]+)/logs", self.deployment_logs),
            ("GET", r"/events", self.list_events),
            ("GET", r"/usage", self.usage),
        ]:
            self.routes.append((method, re.compile(f"^/api/v1{pattern}$"), handler))
        self.transport = httpx.MockTransport(self.handle)

    # -- set-up helpers ------------------------------------------------------------------

    def _add_workspace(self, name: str, *, operator: bool = False) -> WorkspaceOut:
        ws = WorkspaceOut(id=f"w-{next(self.ids)}", name=name, operator=operator,
                          created_at=_now())
        self.workspaces[name] = ws
        return ws

    def add_token(self, secret: str, name: str, role: str, workspace: str) -> None:
        self.tokens[_hash(secret)] = _Token(
            id=f"t-{next(self.ids):08d}", name=name, role=role, workspace=workspace,
            created_at=_now(), secret_hash=_hash(secret),
        )

    def add_workspace_with_token(self, name: str, secret: str, role: str = "admin") -> None:
        self._add_workspace(name)
        self.add_token(secret, f"{name}-{role}", role, name)

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        try:
            caller = self._auth(request)
            for method, pattern, handler in self.routes:
                match = pattern.match(request.url.path)
                if match and method == request.method:
                    return handler(request, caller, **match.groupdict())
            if any(p.match(request.url.path) for _, p, _ in self.routes):
                raise errors.InvalidRequest(f"method {request.method} not allowed",
                                            code="method_not_allowed")
            raise errors.NotFound(f"no route {request.url.path}")
        except errors.NeocloudError as exc:
            return httpx.Response(exc.status, json=exc.to_wire())

    def _auth(self, request: httpx.Request) -> _Token:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise errors.Unauthenticated("missing API token (Authorization: Bearer ...)")
        token = self.tokens.get(_hash(header.removeprefix("Bearer ")))
        if token is None:
            raise errors.Unauthenticated("invalid API token")
        return token

    def _operator(self, caller: _Token) -> None:
        if not self.workspaces[caller.workspace].operator or caller.role != "admin":
            raise errors.PermissionDenied("only an operator admin may do this")

    def _role(self, caller: _Token, *allowed: str) -> None:
        if caller.role not in allowed:
            raise errors.PermissionDenied(f"role {caller.role} may not do this")

    @staticmethod
    def _body(request: httpx.Request, model: type[BaseModel]) -> Any:
        try:
            data = json.loads(request.content or b"null")
        except ValueError:
            raise errors.InvalidRequest("request body is not valid JSON") from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(["body", *map(str, first["loc"])])
            raise errors.ValidationFailed(f"{param}: {first['msg']}", param=param) from None

    @staticmethod
    def _json(model: Any, status: int = 200) -> httpx.Response:
        if isinstance(model, list):
            body = {"object": "list", "data": [m.model_dump(mode="json") for m in model]}
            return httpx.Response(status, json=body)
        return httpx.Response(status, json=model.model_dump(mode="json"))

    def _event(self, workspace: str, kind: str, name: str, reason: str, message: str,
               type_: str = "normal") -> None:
        event = EventOut(id=next(self.ids), kind=kind, name=name, type=type_, reason=reason,
                         message=message, created_at=_now())
        self.events.append((workspace, event))

    # -- tenancy -------------------------------------------------------------------------

    def whoami(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        return self._json(WhoAmI(workspace=self.workspaces[caller.workspace], token=caller.out()))

    def list_workspaces(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        if self.workspaces[caller.workspace].operator:
            return self._json(list(self.workspaces.values()))
        return self._json([self.workspaces[caller.workspace]])

    def create_workspace(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        self._operator(caller)
        body = self._body(request, WorkspaceCreate)
        if body.name in self.workspaces:
            raise errors.AlreadyExists(f"workspace {body.name!r} already exists",
                                       param="body.name")
        return self._json(self._add_workspace(body.name), 201)

    def create_token(self, request: httpx.Request, caller: _Token,
                     ws: str | None = None) -> httpx.Response:
        if ws is not None:
            self._operator(caller)
            if ws not in self.workspaces:
                raise errors.NotFound(f"workspace {ws!r} not found")
        else:
            self._role(caller, "admin")
        workspace = ws or caller.workspace
        body = self._body(request, TokenCreate)
        if any(t.name == body.name and t.workspace == workspace for t in self.tokens.values()):
            raise errors.AlreadyExists(f"token {body.name!r} already exists", param="body.name")
        secret = f"nc-{next(self.ids):04d}-{body.name}"
        self.add_token(secret, body.name, body.role.value, workspace)
        token = self.tokens[_hash(secret)]
        created = TokenCreated(**token.out().model_dump(), token=secret)
        return self._json(created, 201)

    def list_tokens(self, request: httpx.Request, caller: _Token,
                    ws: str | None = None) -> httpx.Response:
        if ws is not None:
            self._operator(caller)
            if ws not in self.workspaces:
                raise errors.NotFound(f"workspace {ws!r} not found", param="name")
        else:
            self._role(caller, "admin")
        workspace = ws or caller.workspace
        mine = [t.out() for t in self.tokens.values() if t.workspace == workspace]
        return self._json(mine)

    def delete_token(self, request: httpx.Request, caller: _Token, name: str) -> httpx.Response:
        self._role(caller, "admin")
        for key, token in list(self.tokens.items()):
            if token.name == name and token.workspace == caller.workspace:
                del self.tokens[key]
                return httpx.Response(204)
        raise errors.NotFound(f"token {name!r} not found")

    # -- inventory -----------------------------------------------------------------------

    def list_nodes(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        return self._json(list(self.nodes.values()))

    def _node(self, name: str) -> NodeOut:
        if name not in self.nodes:
            raise errors.NotFound(f"node {name!r} not found")
        return self.nodes[name]

    def get_node(self, request: httpx.Request, caller: _Token, name: str) -> httpx.Response:
        return self._json(self._node(name))

    def create_node(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        self._operator(caller)
        body: NodeCreate = self._body(request, NodeCreate)
        if body.name in self.nodes:
            raise errors.AlreadyExists(f"node {body.name!r} already exists", param="body.name")
        gpus = []
        for spec in body.gpus:
            for _ in range(spec.count):
                gpus.append(GpuOut(index=len(gpus), type=spec.type, memory_mib=spec.memory_mib))
        node = NodeOut(
            id=f"n-{next(self.ids)}", name=body.name, status="ready", backend=body.backend,
            pool=body.pool, cpu_milli=body.cpu_milli, memory_mib=body.memory_mib, gpus=gpus,
            labels=body.labels, created_at=_now(),
        )
        self.nodes[node.name] = node
        return self._json(node, 201)

    def update_node(self, request: httpx.Request, caller: _Token, name: str) -> httpx.Response:
        self._operator(caller)
        node = self._node(name)
        body: NodeUpdate = self._body(request, NodeUpdate)
        changes = body.model_dump(exclude_none=True)
        self.nodes[name] = node = _changed(node, changes)
        return self._json(node)

    def delete_node(self, request: httpx.Request, caller: _Token, name: str) -> httpx.Response:
        self._operator(caller)
        self._node(name)
        del self.nodes[name]
        return httpx.Response(204)

    def list_shapes(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        return self._json(list(self.shapes.values()))

    def get_shape(self, request: httpx.Request, caller: _Token, name: str) -> httpx.Response:
        if name not in self.shapes:
            raise errors.NotFound(f"shape {name!r} not found")
        return self._json(self.shapes[name])

    def create_shape(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        self._operator(caller)
        body: ShapeCreate = self._body(request, ShapeCreate)
        if body.name in self.shapes:
            raise errors.AlreadyExists(f"shape {body.name!r} already exists", param="body.name")
        self.shapes[body.name] = shape = ShapeOut(**body.model_dump())
        return self._json(shape, 201)

    # -- deployments ---------------------------------------------------------------------

    def _deployment(self, caller: _Token, name: str) -> _Deployment:
        dep = self.deployments.get((caller.workspace, name))
        if dep is None:
            raise errors.NotFound(f"deployment {name!r} not found")
        if dep.out.status == "deleting":
            del self.deployments[(caller.workspace, name)]
            raise errors.NotFound(f"deployment {name!r} not found")
        return dep

    def _advance(self, dep: _Deployment) -> None:
        """One poll's worth of reconciling."""
        out = dep.out
        dep.gets += 1
        shape = self.shapes[out.shape]
        replicas = []
        for index in range(out.replicas):
            rid = f"{out.name}-{out.generation}-{index}"
            dep.logs.setdefault(rid, [f"starting replica {rid}", "loading model"])
            status, message = "starting", None
            if shape.gpu_count:
                status = "pending"
                message = f"no node has {shape.gpu_count} free GPUs of type {shape.gpu_type}"
            elif dep.gets >= self.ready_after:
                if out.service.startswith("crash"):
                    status, message = "failed", "process exited with code 1"
                else:
                    status = "ready"
            replicas.append(ReplicaOut(
                id=rid, status=status, generation=out.generation,
                node=None if status == "pending" else "local", gpu_indices=[],
                port=None if status == "pending" else 9000 + index, pid=None, restarts=0,
                message=message, created_at=out.created_at,
                ready_at=_now() if status == "ready" else None,
            ))
        ready = sum(r.status == "ready" for r in replicas)
        old_status = out.status
        if any(r.status == "failed" for r in replicas):
            status, reason = "failed", None
        elif replicas and all(r.status == "pending" for r in replicas):
            status, reason = "pending", replicas[0].message
        elif ready == out.replicas:
            status, reason = ("ready" if out.replicas else "scaled_to_zero"), None
        elif ready:
            status, reason = "degraded", None
        else:
            status, reason = "pending", None
        dep.out = _changed(out, {
            "replica_list": replicas, "ready_replicas": ready, "status": status,
            "pending_reason": reason,
        })
        if status != old_status or dep.gets == 1:
            kind = "warning" if status in ("failed",) or reason else "normal"
            word = {"pending": "Unschedulable" if reason else "Scheduled",
                    "ready": "Ready", "failed": "Crashed"}.get(status, status.capitalize())
            self._event(dep.workspace, "deployment", out.name, word,
                        reason or f"deployment is {status}", kind)

    def list_deployments(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        for key, dep in list(self.deployments.items()):
            if dep.out.status == "deleting":
                del self.deployments[key]
        mine = [d.out for (ws, _), d in self.deployments.items() if ws == caller.workspace]
        return self._json(mine)

    def create_deployment(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        self._role(caller, "admin", "member")
        body: DeploymentCreate = self._body(request, DeploymentCreate)
        if body.shape not in self.shapes:
            raise errors.NotFound(f"shape {body.shape!r} not found", param="body.shape")
        if (caller.workspace, body.name) in self.deployments:
            raise errors.AlreadyExists(f"deployment {body.name!r} already exists",
                                       param="body.name")
        now = _now()
        out = DeploymentOut(
            id=f"d-{next(self.ids)}", name=body.name, service=body.service, model=body.model,
            shape=body.shape, replicas=body.replicas, ready_replicas=0, status="pending",
            pending_reason=None, generation=1, env=body.env,
            endpoint=f"/endpoints/{body.name}/", created_at=now, updated_at=now,
        )
        self.deployments[(caller.workspace, body.name)] = _Deployment(out, caller.workspace)
        self._event(caller.workspace, "deployment", body.name, "Created", "deployment created")
        return self._json(out, 201)

    def get_deployment(self, request: httpx.Request, caller: _Token, name: str) -> httpx.Response:
        dep = self._deployment(caller, name)
        self._advance(dep)
        return self._json(dep.out)

    def update_deployment(self, request: httpx.Request, caller: _Token,
                          name: str) -> httpx.Response:
        self._role(caller, "admin", "member")
        dep = self._deployment(caller, name)
        body: DeploymentUpdate = self._body(request, DeploymentUpdate)
        changes = body.model_dump(exclude_unset=True)
        if changes.get("shape") and changes["shape"] not in self.shapes:
            raise errors.NotFound(f"shape {changes['shape']!r} not found", param="body.shape")
        if set(changes) - {"replicas"}:
            changes["generation"] = dep.out.generation + 1
        changes["updated_at"] = _now()
        dep.out = _changed(dep.out, changes)
        dep.gets = 0
        return self._json(dep.out)

    def delete_deployment(self, request: httpx.Request, caller: _Token,
                          name: str) -> httpx.Response:
        self._role(caller, "admin", "member")
        dep = self._deployment(caller, name)
        dep.out = _changed(dep.out, {"status": "deleting"})
        return httpx.Response(204)

    def deployment_events(self, request: httpx.Request, caller: _Token,
                          name: str) -> httpx.Response:
        self._deployment(caller, name)
        mine = [e for ws, e in self.events if ws == caller.workspace and e.name == name]
        return self._json(list(reversed(mine)))  # newest first: the SDK must sort

    def deployment_logs(self, request: httpx.Request, caller: _Token,
                        name: str) -> httpx.Response:
        dep = self._deployment(caller, name)
        self.log_requests += 1
        if (self.delete_after_log_requests is not None
                and self.log_requests > self.delete_after_log_requests):
            del self.deployments[(caller.workspace, name)]
            raise errors.NotFound(f"deployment {name!r} not found")
        params = request.url.params
        tail = params.get("tail")
        if tail is not None and not tail.isdigit():
            raise errors.ValidationFailed("tail must be a non-negative integer",
                                          param="query.tail")
        replica = params.get("replica")
        if replica is not None and replica not in dep.logs:
            raise errors.NotFound(f"replica {replica!r} not found")
        for rid, lines in dep.logs.items():  # the requested logs grow before being read
            if replica in (None, rid):
                for _ in range(self.log_growth):
                    lines.append(f"{rid} line {len(lines)}")

        def cut(lines: list[str]) -> list[str]:
            return lines if tail is None else lines[len(lines) - min(int(tail), len(lines)):]

        if replica is not None:
            text = "".join(line + "\n" for line in cut(dep.logs[replica]))
        else:
            text = "".join(
                f"==> replica {rid} <==\n" + "".join(line + "\n" for line in cut(lines))
                for rid, lines in dep.logs.items()
            )
        return httpx.Response(200, text=text, headers={"content-type": "text/plain"})

    def list_events(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        params = request.url.params
        mine = [e for ws, e in self.events if ws == caller.workspace]
        if params.get("kind"):
            mine = [e for e in mine if e.kind == params["kind"]]
        if params.get("name"):
            mine = [e for e in mine if e.name == params["name"]]
        if params.get("limit"):
            mine = mine[-int(params["limit"]):]
        return self._json(mine)

    def usage(self, request: httpx.Request, caller: _Token) -> httpx.Response:
        lines = [
            BillLine(kind="replica", name=d.out.name, shape=d.out.shape, seconds=120.0,
                     gpu_seconds=0.0, requests=7,
                     amount_micros=1667)  # 120 s at $0.05/h, rounded half up to a µ$
            for (ws, _), d in self.deployments.items() if ws == caller.workspace
        ]
        bill = Bill(
            workspace=caller.workspace, period_start=None, period_end=_now(), lines=lines,
            replica_seconds=sum(line.seconds for line in lines),
            total_micros=sum(line.amount_micros for line in lines),
        )
        return self._json(bill)


M = TypeVar("M", bound=BaseModel)


def _changed(model: M, changes: dict[str, Any]) -> M:
    """A validated copy of ``model`` with ``changes`` applied."""
    return type(model).model_validate({**model.model_dump(), **changes})


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
