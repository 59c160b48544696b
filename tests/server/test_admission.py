"""Admission on the control plane: quotas, the queue with reasons, priorities and
preemption, node loss, and quotas under concurrent requests."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from tests.server.helpers import Cloud, make_settings

H100x8 = [{"type": "H100", "count": 8, "memory_mib": 81559}]


def _dep(cloud: Cloud, name: str, token: str | None = None) -> dict:
    return cloud.api("GET", f"/deployments/{name}", token=token).json()


def test_quota_holds_work_with_a_reason(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=H100x8)
    tok = cloud.new_workspace("team")
    r = cloud.api("PUT", "/workspaces/team/quota", json={"gpus": {"H100": 2}})
    assert r.status_code == 200, r.text
    cloud.api("POST", "/deployments", token=tok, json={
        "name": "m", "service": "chat", "shape": "gpu.h100", "replicas": 3})
    cloud.reconcile(3)
    dep = _dep(cloud, "m", tok)
    assert dep["ready_replicas"] == 2
    assert "quota: 2/2 H100 GPUs in use" in dep["pending_reason"]
    q = cloud.api("GET", "/queue", token=tok).json()["data"]
    assert len(q) == 1 and q[0]["name"] == "m" and "quota" in q[0]["reason"]
    quota = cloud.api("GET", "/quota", token=tok).json()
    assert quota["used_gpus"] == {"H100": 2.0} and quota["gpus"] == {"H100": 2}
    # Members cannot raise their own quota.
    assert cloud.api("PUT", "/workspaces/team/quota", token=tok,
                     json={"gpus": {"H100": 8}}).status_code == 403
    cloud.api("PUT", "/workspaces/team/quota", json={"gpus": {"H100": 3}})
    cloud.reconcile(2)
    assert _dep(cloud, "m", tok)["ready_replicas"] == 3
    assert cloud.api("GET", "/queue", token=tok).json()["data"] == []


def _any_gpu_team(cloud: Cloud, *, a10s: int, quota: dict[str, int]) -> str:
    """Two H100s and ``a10s`` A10s on two nodes, a shape of one GPU of any model, and a
    workspace ``team`` with the GPU ``quota``; returns the workspace's token."""
    cloud.add_fake_node("h", gpus=[{"type": "H100", "count": 2, "memory_mib": 81559}])
    cloud.add_fake_node("a", gpus=[{"type": "A10", "count": a10s, "memory_mib": 24576}])
    r = cloud.api("POST", "/shapes", json={"name": "gpu.any", "cpu_milli": 1000,
                                           "memory_mib": 1024, "gpu_count": 1,
                                           "price_per_hour_usd": 1.0})
    assert r.status_code == 201, r.text
    tok = cloud.new_workspace("team")
    r = cloud.api("PUT", "/workspaces/team/quota", json={"gpus": quota})
    assert r.status_code == 200, r.text
    return tok


@pytest.mark.parametrize("quota", [{"H100": 1}, {"H100": 1, "*": 4}])
def test_any_gpu_model_work_skips_only_the_models_at_their_quota(
        cloud: Cloud, quota: dict[str, int]) -> None:
    """Found at the quota's edge: with ``{"H100": 1}`` a deployment of a shape that takes
    any GPU model waited "quota: 1/1 H100 GPUs in use" beside a free, unlimited A10; and
    with ``{"H100": 0, "*": 8}`` it took the H100 (over that quota)."""
    tok = _any_gpu_team(cloud, a10s=2, quota=quota)
    cloud.api("POST", "/deployments", token=tok, json={
        "name": "m", "service": "chat", "shape": "gpu.any", "replicas": 3})
    cloud.reconcile(3)
    assert _dep(cloud, "m", tok)["ready_replicas"] == 3
    held = cloud.api("GET", "/quota", token=tok).json()["used_gpus"]
    assert held == {"H100": 1.0, "A10": 2.0}, held
    check = cloud.api("GET", "/admin/check").json()
    assert check["ok"], check["violations"]
    # Nothing left within the quota: a fourth replica waits, naming the limit.
    r = cloud.api("PATCH", "/deployments/m", token=tok, json={"replicas": 4})
    assert r.status_code == 200, r.text
    cloud.reconcile(2)
    dep = _dep(cloud, "m", tok)
    assert dep["ready_replicas"] == 3 and dep["pending_reason"], dep


def test_any_gpu_model_work_never_takes_a_model_of_zero_quota(cloud: Cloud) -> None:
    tok = _any_gpu_team(cloud, a10s=1, quota={"H100": 0, "*": 8})
    cloud.api("POST", "/deployments", token=tok, json={
        "name": "m", "service": "chat", "shape": "gpu.any", "replicas": 2})
    cloud.reconcile(3)
    dep = _dep(cloud, "m", tok)
    assert dep["ready_replicas"] == 1 and "GPU" in dep["pending_reason"], dep
    assert cloud.api("GET", "/quota", token=tok).json()["used_gpus"] == {"A10": 1.0}
    check = cloud.api("GET", "/admin/check").json()
    assert check["ok"], check["violations"]


def test_higher_priority_preempts_preemptible_work_only(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=H100x8)
    cloud.api("POST", "/deployments", json={"name": "batch", "service": "chat",
              "shape": "gpu.h100", "replicas": 6, "preemptible": True, "priority": 0})
    cloud.api("POST", "/deployments", json={"name": "keep", "service": "chat",
              "shape": "gpu.h100", "replicas": 2, "priority": 0})
    cloud.reconcile(2)
    assert _dep(cloud, "batch")["ready_replicas"] == 6
    cloud.api("POST", "/deployments", json={"name": "prod", "service": "chat",
              "shape": "gpu.h100", "replicas": 3, "priority": 100})
    cloud.reconcile(6)
    assert _dep(cloud, "prod")["ready_replicas"] == 3
    assert _dep(cloud, "keep")["ready_replicas"] == 2  # not preemptible: untouched
    batch = _dep(cloud, "batch")
    assert batch["ready_replicas"] == 3
    reasons = [e["reason"] for e in
               cloud.api("GET", "/deployments/batch/events").json()["data"]]
    assert "Preempted" in reasons
    # Equal priority never preempts.
    cloud.api("POST", "/deployments", json={"name": "peer", "service": "chat",
              "shape": "gpu.h100", "priority": 0})
    cloud.reconcile(3)
    assert _dep(cloud, "peer")["status"] == "pending"
    assert _dep(cloud, "batch")["ready_replicas"] == 3


def test_node_loss_frees_allocations_and_replaces(cloud: Cloud) -> None:
    cloud.add_fake_node("a", gpus=H100x8)
    cloud.api("POST", "/deployments", json={"name": "m", "service": "chat",
              "shape": "gpu.h100", "replicas": 2})
    cloud.reconcile(2)
    assert {r["node"] for r in _dep(cloud, "m")["replica_list"]} == {"a"}
    cloud.add_fake_node("b", gpus=H100x8)
    cloud.api("PATCH", "/nodes/a", json={"status": "not_ready"})
    cloud.reconcile(3)
    dep = _dep(cloud, "m")
    assert dep["ready_replicas"] == 2
    assert {r["node"] for r in dep["replica_list"]} == {"b"}
    assert cloud.api("GET", "/nodes/a").json()["gpus"][0]["allocated_milli"] == 0
    reasons = [e["reason"] for e in cloud.api("GET", "/deployments/m/events").json()["data"]]
    assert "NodeLost" in reasons


@pytest.mark.parametrize("copies", [1, 2])
def test_parallel_requests_never_exceed_quota(
    tmp_path: Path, db_url: str, copies: int, live_server_factory
) -> None:
    """20 parallel deployment requests (1 GPU each) against a quota of 3 GPUs, spread over
    ``copies`` control planes sharing the database, each with its reconciler running."""
    if copies == 2 and db_url.startswith("sqlite"):
        pytest.skip("several control-plane copies need PostgreSQL")
    apps = []
    fleet = FakeBackend()  # one simulated cluster, driven by every control-plane copy
    for i in range(copies):
        settings = make_settings(tmp_path / f"home{i}", db_url)
        apps.append(create_app(settings, backends={"fake": fleet}))
    servers = [live_server_factory(app) for app in apps]
    from neocloud.server.bootstrap import bootstrap

    token = bootstrap(apps[0].state.db).token
    h = {"Authorization": f"Bearer {token}"}
    base = servers[0].url
    r = httpx.post(f"{base}/api/v1/nodes", headers=h, json={
        "name": "g1", "cpu_milli": 256000, "memory_mib": 4_000_000, "gpus": H100x8,
        "backend": "fake"})
    assert r.status_code == 201, r.text
    httpx.put(f"{base}/api/v1/workspaces/default/quota", headers=h, json={"gpus_total": 3})

    def create(i: int) -> int:
        url = servers[i % copies].url
        return httpx.post(f"{url}/api/v1/deployments", headers=h, timeout=30, json={
            "name": f"d{i}", "service": "chat", "shape": "gpu.h100"}).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(create, range(20)))
    assert codes == [201] * 20
    deadline = time.monotonic() + 120  # generous: the machine may be busy
    while time.monotonic() < deadline:
        deps = httpx.get(f"{base}/api/v1/deployments", headers=h).json()["data"]
        ready = sum(d["ready_replicas"] for d in deps)
        pending = [d for d in deps if d["status"] == "pending" and d["pending_reason"]]
        if ready == 3 and len(pending) == 17:
            break
        time.sleep(0.2)
    quota = httpx.get(f"{base}/api/v1/quota", headers=h).json()
    assert quota["used_gpus"] == {"H100": 3.0}
    assert ready == 3 and len(pending) == 17
    assert all("quota: 3/3 GPUs in use" in d["pending_reason"] for d in pending)
