"""The control plane's side of autoscaling, scale from zero and graceful drain, on
simulated nodes: the deployment reconciler feeds the pure policy the gateway's figures
(given here by hand, with a clock the test moves), a request held at the gateway wakes a
deployment at zero, and stopping replicas drain in the background (both databases)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from neocloud.gateway.stats import DeploymentStats
from neocloud.server.backends.base import WorkloadSpec, WorkloadState
from neocloud.server.db.tables import Deployment, Node, Replica
from neocloud.server.reconcilers.deployments import DRAIN_MARGIN_S
from tests.server.helpers import Cloud

FAST = {"min_replicas": 0, "max_replicas": 4, "target": 2, "window_s": 10,
        "panic_window_s": 2, "scale_up_delay_s": 0, "scale_down_delay_s": 10,
        "scale_to_zero_delay_s": 20}


@dataclass
class Load:
    """The gateway's figures of each deployment, set by the test."""

    by_id: dict[str, DeploymentStats] = field(default_factory=dict)

    def set(self, dep_id: str, in_flight: int = 0, total: int = 0,
            per_replica: dict[str, int] | None = None) -> None:
        self.by_id[dep_id] = DeploymentStats(
            deployment_id=dep_id, workspace_id="", name="", in_flight=in_flight, held=0,
            requests_total=total, errors_total=0, request_rate_per_s=0.0, window_s=60,
            last_request_at=None, replica_in_flight=dict(per_replica or {}))

    def __call__(self, dep_id: str) -> DeploymentStats | None:
        return self.by_id.get(dep_id)


@pytest.fixture
def load(cloud: Cloud) -> Load:
    load = Load()
    rec = cloud.app.state.reconcilers.deployments
    rec.stats = load
    clock = [1000.0]
    rec.clock = lambda: clock[0]
    load.clock = clock  # type: ignore[attr-defined]
    return load


def _tick(cloud: Cloud, load: Load, dt: float, times: int = 1) -> None:
    for _ in range(times):
        load.clock[0] += dt  # type: ignore[attr-defined]
        cloud.reconcile(1)


def _dep(cloud: Cloud, name: str) -> dict[str, Any]:
    r = cloud.api("GET", f"/deployments/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def _create(cloud: Cloud, name: str, **kw: Any) -> dict[str, Any]:
    r = cloud.api("POST", "/deployments", json={"name": name, "service": "embeddings", **kw})
    assert r.status_code == 201, r.text
    return r.json()


def test_load_scales_up_then_idle_scales_down_to_zero(cloud: Cloud, load: Load) -> None:
    cloud.add_fake_node("n1")
    d = _create(cloud, "a", replicas=1, autoscaling=FAST)
    assert d["autoscaling"]["max_replicas"] == 4 and d["replicas"] == 1
    _tick(cloud, load, 1.0, 2)
    assert _dep(cloud, "a")["status"] == "ready"
    revision = _dep(cloud, "a")["revision"]
    load.set(d["id"], in_flight=7, total=50)
    _tick(cloud, load, 1.0, 3)
    dep = _dep(cloud, "a")
    assert dep["replicas"] == 4 and dep["ready_replicas"] == 4, dep
    assert dep["revision"] == revision  # the autoscaler's count is not a spec change
    ups = [e for e in cloud.api("GET", "/deployments/a/events").json()["data"]
           if e["reason"] in ("ScaleUp", "BurstScaleUp")]
    assert ups and "in_flight" in ups[0]["message"] and "-> 4" in ups[0]["message"]
    # Idle: down only after the delays, then to zero.
    load.set(d["id"], in_flight=0, total=50)
    _tick(cloud, load, 1.0, 5)
    assert _dep(cloud, "a")["replicas"] == 4  # not yet: scale_down_delay_s is 10 s
    _tick(cloud, load, 1.0, 40)
    dep = _dep(cloud, "a")
    assert dep["replicas"] == 0 and dep["status"] == "scaled_to_zero", dep
    reasons = [e["reason"] for e in cloud.api("GET", "/deployments/a/events").json()["data"]]
    assert "ScaleToZero" in reasons


def test_steady_load_does_not_oscillate(cloud: Cloud, load: Load) -> None:
    cloud.add_fake_node("n1")
    d = _create(cloud, "s", replicas=1, autoscaling=FAST)
    load.set(d["id"], in_flight=5, total=0)
    _tick(cloud, load, 1.0, 5)
    first = _dep(cloud, "s")["replicas"]
    counts = []
    for i in range(60):
        load.set(d["id"], in_flight=5, total=10 * i)
        _tick(cloud, load, 1.0)
        counts.append(_dep(cloud, "s")["replicas"])
    assert set(counts) == {first} == {3}, counts


def test_scale_in_stops_not_ready_then_idle_then_least_loaded(cloud: Cloud, load: Load
                                                              ) -> None:
    cloud.add_fake_node("n1")
    d = _create(cloud, "m", replicas=3)
    cloud.reconcile(2)
    reps = _dep(cloud, "m")["replica_list"]
    assert [r["status"] for r in reps] == ["ready"] * 3
    busy, idle, light = (r["id"] for r in reps)
    load.set(d["id"], in_flight=7, per_replica={busy: 5, light: 2, idle: 0})
    assert cloud.api("PATCH", "/deployments/m", json={"replicas": 2}).status_code == 200
    cloud.reconcile(2)
    left = {r["id"] for r in _dep(cloud, "m")["replica_list"]}
    assert left == {busy, light}
    assert cloud.api("PATCH", "/deployments/m", json={"replicas": 1}).status_code == 200
    cloud.reconcile(2)
    assert {r["id"] for r in _dep(cloud, "m")["replica_list"]} == {busy}


class SlowStops:
    """A fake backend whose stop takes ``delay_s`` (a replica draining its requests) and
    records the grace it was given and whether the replica was still routable then."""

    def __init__(self, inner: Any, cloud: Cloud, delay_s: float):
        self.inner, self.cloud, self.delay_s = inner, cloud, delay_s
        self.name = inner.name
        self.stops: list[tuple[float, bool]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stop(self, handle: dict[str, Any], *, grace_s: float) -> WorkloadState:
        routes = self.cloud.app.state.routes
        ws = {r.replica_id for t in routes._routes.values() for rt in t.values()
              for r in rt.upstreams}
        wid = next(w for w in self.inner.workload_ids()
                   if (self.inner.find(w) or {}).get("fake_id") == handle.get("fake_id"))
        self.stops.append((grace_s, wid in ws))
        time.sleep(self.delay_s)
        return self.inner.stop(handle, grace_s=grace_s)


def test_a_long_drain_does_not_hold_up_other_deployments(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    slow = SlowStops(cloud.fake, cloud, delay_s=3.0)
    rec = cloud.app.state.reconcilers.deployments
    rec.backends["fake"] = slow
    _create(cloud, "draining", replicas=2, drain_timeout_s=40)
    cloud.reconcile(2)
    assert cloud.api("PATCH", "/deployments/draining", json={"replicas": 1}).status_code == 200
    _create(cloud, "other")
    t0 = time.monotonic()
    cloud.reconcile(1)
    took = time.monotonic() - t0
    cloud.reconcile(1)
    assert _dep(cloud, "other")["status"] == "ready"
    assert took < slow.delay_s, took  # the pass went on while the replica drains
    reps = _dep(cloud, "draining")["replica_list"]
    assert sorted(r["status"] for r in reps) == ["ready", "stopping"]
    assert slow.stops and slow.stops[0][0] == 40 + DRAIN_MARGIN_S
    assert rec.wait_stops(10)
    cloud.reconcile(1)
    assert [r["status"] for r in _dep(cloud, "draining")["replica_list"]] == ["ready"]


def test_stopping_replica_leaves_the_route_table_before_it_is_stopped(cloud: Cloud) -> None:
    # Route tables skip replicas on fake nodes, so the replicas here are on a node the
    # route table serves (backend "local" in the database; the fake backend runs them).
    cloud.add_fake_node("n1")
    rec = cloud.app.state.reconcilers.deployments
    slow = SlowStops(cloud.fake, cloud, delay_s=0.0)
    rec.backends["fake"] = slow
    _create(cloud, "r", replicas=2)
    cloud.reconcile(2)
    with cloud.app.state.db.session() as s:
        n = s.scalars(select(Node)).one()
        n.backend = "local"
        s.commit()
    rec.backends["local"] = slow
    cloud.app.state.routes.refresh()
    route = cloud.app.state.routes._routes[_ws(cloud)]["r"]
    assert len(route.upstreams) == 2
    assert cloud.api("PATCH", "/deployments/r", json={"replicas": 1}).status_code == 200
    cloud.reconcile(1)
    assert rec.wait_stops(5)
    assert slow.stops and slow.stops[0][1] is False  # not routable when told to stop


def _ws(cloud: Cloud) -> str:
    with cloud.app.state.db.session() as s:
        return s.scalars(select(Deployment.workspace_id)).first() or ""


def test_spec_names_node_share_and_secret_env(cloud: Cloud) -> None:
    cloud.add_fake_node("gpu-1", gpus=[{"type": "H100", "count": 2, "memory_mib": 81559}])
    assert cloud.api("PUT", "/secrets/tok", json={"value": "v"}).status_code == 201
    _create(cloud, "g", shape="gpu.h100", secrets={"HF_AUTH": "tok"}, drain_timeout_s=50)
    cloud.reconcile(2)
    spec: WorkloadSpec = cloud.fake.started[-1]
    assert spec.node_name == "gpu-1" and spec.gpu_milli == 1000
    assert spec.secret_env == frozenset({"HF_AUTH"})
    assert spec.env["NEOCLOUD_GRACE_PERIOD_S"] == "50"


# -- scale from zero through the gateway ----------------------------------------------


class Stub:
    """A real HTTP server on loopback standing in for a replica."""

    def __init__(self) -> None:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"ok": true}'})

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.close()


def test_held_request_is_released_when_a_replica_is_ready(cloud: Cloud, stub: Stub) -> None:
    cloud.add_fake_node("n1")
    d = _create(cloud, "z", replicas=0, autoscaling=FAST, cold_start_timeout_s=20)
    assert d["status"] == "scaled_to_zero"
    cloud.app.state.routes.refresh()
    out: dict[str, httpx.Response] = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "r", cloud.client.post("/endpoints/z/x", headers=cloud.h(), content=b"{}")))
    t.start()
    deadline = time.monotonic() + 10
    while _dep(cloud, "z")["replicas"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    dep = _dep(cloud, "z")
    assert dep["replicas"] == 1  # the held request woke it
    assert any(e["reason"] == "ScalingFromZero"
               for e in cloud.api("GET", "/deployments/z/events").json()["data"])
    cloud.reconcile(2)
    assert t.is_alive()  # still held: no routable replica yet
    cold = [e for e in cloud.api("GET", "/deployments/z/events").json()["data"]
            if e["reason"] == "ColdStart"]
    assert len(cold) == 1 and "started from zero" in cold[0]["message"]
    with cloud.app.state.db.session() as s:  # the replica's node is served by the gateway
        s.scalars(select(Node)).one().backend = "local"
        r = s.scalars(select(Replica).where(Replica.status == "ready")).one()
        r.port = stub.port
        s.commit()
    cloud.app.state.routes.refresh()
    t.join(10)
    assert out["r"].status_code == 200 and out["r"].json() == {"ok": True}


def test_cold_start_timeout_is_503_with_retry_after(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, "slow", replicas=0, autoscaling=FAST, cold_start_timeout_s=0.5)
    cloud.app.state.routes.refresh()
    t0 = time.monotonic()
    r = cloud.client.post("/endpoints/slow/x", headers=cloud.h(), content=b"{}")
    took = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "deployment_starting"
    assert int(r.headers["retry-after"]) >= 1
    assert 0.4 < took < 5


def test_replica_crashing_while_waking_fails_held_requests_fast(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, "boom", replicas=0, autoscaling=FAST, cold_start_timeout_s=60)
    cloud.app.state.routes.refresh()
    done: dict[str, Any] = {}

    def call() -> None:
        t0 = time.monotonic()
        done["r"] = cloud.client.post("/endpoints/boom/x", headers=cloud.h(), content=b"{}")
        done["took"] = time.monotonic() - t0

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 10
    while _dep(cloud, "boom")["replicas"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    cloud.reconcile(1)
    with cloud.app.state.db.session() as s:
        rid = s.scalars(select(Replica.id).where(Replica.status.in_(("starting", "ready")))
                        ).one()
    cloud.fake.write(rid, "Traceback (most recent call last):\n"
                          "ImportError: No module named 'missing_dep'\n")
    cloud.fake.crash(rid)
    cloud.reconcile(1)  # the crash is seen and the route table rebuilt
    t.join(10)
    r = done["r"]
    assert r.status_code == 503 and done["took"] < 30
    err = r.json()["error"]
    assert err["code"] == "deployment_failed_to_start"
    assert "No module named 'missing_dep'" in err["message"]
    # A new request fails at once too, with the same message.
    r2 = cloud.client.post("/endpoints/boom/x", headers=cloud.h(), content=b"{}")
    assert r2.status_code == 503 and "missing_dep" in r2.json()["error"]["message"]


def test_models_list_marks_deployments_that_cannot_serve(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, "waiting", shape="gpu.h100")  # never placed: no GPU node
    _create(cloud, "sleepy", replicas=0, autoscaling=FAST)
    cloud.reconcile(2)
    cloud.app.state.routes.refresh()
    got = {m["id"]: m for m in cloud.client.get("/v1/models", headers=cloud.h()).json()["data"]}
    assert got["waiting"]["ready"] is False and got["waiting"]["servable"] is False
    assert got["sleepy"]["ready"] is False and got["sleepy"]["servable"] is True


def test_scale_to_zero_without_autoscaling_drains_then_refuses_with_a_clear_503(
        cloud: Cloud) -> None:
    """``neocloud scale NAME 0`` on a deployment that does not autoscale: its replicas
    drain (the drain timeout as grace) and stop, it reads ``scaled_to_zero``, and a request
    gets 503 ``deployment_scaled_to_zero`` at once, saying it cannot wake; nothing starts."""
    cloud.add_fake_node("n1")
    rec = cloud.app.state.reconcilers.deployments
    slow = SlowStops(cloud.fake, cloud, delay_s=0.0)
    rec.backends["fake"] = slow
    _create(cloud, "fixed", replicas=1, drain_timeout_s=30)
    cloud.reconcile(2)
    assert _dep(cloud, "fixed")["ready_replicas"] == 1
    assert cloud.api("PATCH", "/deployments/fixed", json={"replicas": 0}).status_code == 200
    cloud.reconcile(1)
    assert rec.wait_stops(10)
    cloud.reconcile(1)
    dep = _dep(cloud, "fixed")
    assert dep["status"] == "scaled_to_zero" and dep["replicas"] == 0
    assert dep["replica_list"] == []
    assert [grace for grace, _ in slow.stops] == [30 + DRAIN_MARGIN_S]
    cloud.app.state.routes.refresh()
    r = cloud.client.post("/endpoints/fixed/x", headers=cloud.h(), content=b"{}")
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "deployment_scaled_to_zero" and err["type"]
    assert "scaled to zero" in err["message"] and "cannot wake" in err["message"]
    assert "neocloud scale fixed 1" in err["message"]
    assert "retry-after" not in r.headers  # it will not come back by itself
    cloud.reconcile(1)
    assert _dep(cloud, "fixed")["replicas"] == 0  # the request did not wake it
    reasons = [e["reason"] for e in cloud.api("GET", "/deployments/fixed/events").json()["data"]]
    assert "ScalingFromZero" not in reasons


def test_a_request_right_after_the_create_finds_the_deployment(cloud: Cloud) -> None:
    """A request sent before the route table's next rebuild is not a 404 for a deployment
    that exists: the gateway's table rebuilds on such a miss."""
    cloud.add_fake_node("n1")
    cloud.app.state.routes.refresh()  # the table as it was before the create
    _create(cloud, "fresh", replicas=0)
    r = cloud.client.post("/endpoints/fresh/x", headers=cloud.h(), content=b"{}")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "deployment_scaled_to_zero"
    gone = cloud.client.post("/endpoints/never-created/x", headers=cloud.h(), content=b"{}")
    assert gone.status_code == 404


def test_a_crash_restart_is_no_cold_start(cloud: Cloud) -> None:
    """A replica of a deployment that scales to zero, crashed and restarted while it was
    the only one, is a restart (its ``Crashed`` event and restart count say so), not a
    start from zero: before, its second ready wrote a second ``ColdStart`` whose figure,
    counted from the replica row's creation, held the whole first run."""
    cloud.add_fake_node("n1")
    _create(cloud, "once", replicas=1, autoscaling=FAST)
    cloud.reconcile(2)

    def cold_starts() -> list[dict[str, Any]]:
        return [e for e in cloud.api("GET", "/deployments/once/events").json()["data"]
                if e["reason"] == "ColdStart"]

    assert len(cold_starts()) == 1  # the first start, from zero replicas
    with cloud.app.state.db.session() as s:
        rid = s.scalars(select(Replica.id).where(Replica.status == "ready")).one()
    cloud.fake.crash(rid)
    cloud.reconcile(4)
    with cloud.app.state.db.session() as s:
        again = s.get(Replica, rid)
        assert again is not None and again.status == "ready" and again.restarts == 1
    assert len(cold_starts()) == 1
