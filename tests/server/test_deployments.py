"""Deployments on simulated nodes: placement with reasons, crash restarts, scaling,
rolling updates, deletion and metering (both databases; the reconciler is driven by hand)."""

from __future__ import annotations

from tests.server.helpers import Cloud

H100 = [{"type": "H100", "count": 8, "memory_mib": 81559}]


def _dep(cloud: Cloud, name: str) -> dict:
    r = cloud.api("GET", f"/deployments/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def _events(cloud: Cloud, name: str) -> list[dict]:
    return cloud.api("GET", f"/deployments/{name}/events").json()["data"]


def test_waits_with_a_reason_then_starts_when_capacity_frees(cloud: Cloud) -> None:
    cloud.add_fake_node("gpu-1", gpus=H100)
    r = cloud.api("POST", "/deployments", json={"name": "big", "service": "chat",
                  "shape": "gpu.h100x8"})
    assert r.status_code == 201
    cloud.reconcile(2)
    assert _dep(cloud, "big")["status"] == "ready"
    cloud.api("POST", "/deployments", json={"name": "other", "service": "chat",
              "shape": "gpu.h100"})
    cloud.reconcile(2)
    other = _dep(cloud, "other")
    assert other["status"] == "pending"
    assert other["pending_reason"] and "GPU" in other["pending_reason"]
    assert any(e["reason"] == "Unschedulable" for e in _events(cloud, "other"))
    # Free the node: the waiting deployment starts.
    assert cloud.api("DELETE", "/deployments/big").status_code == 204
    cloud.reconcile(3)
    assert cloud.api("GET", "/deployments/big").status_code == 404
    assert _dep(cloud, "other")["status"] == "ready"
    assert _dep(cloud, "other")["pending_reason"] is None
    assert _dep(cloud, "other")["replica_list"][0]["node"] == "gpu-1"


def test_replicas_spread_and_gpu_indices_are_distinct(cloud: Cloud) -> None:
    cloud.add_fake_node("gpu-1", gpus=H100)
    cloud.api("POST", "/deployments", json={"name": "m", "service": "chat",
              "shape": "gpu.h100", "replicas": 8})
    cloud.reconcile(2)
    dep = _dep(cloud, "m")
    assert dep["ready_replicas"] == 8
    used = sorted(i for r in dep["replica_list"] for i in r["gpu_indices"])
    assert used == list(range(8))
    node = cloud.api("GET", "/nodes/gpu-1").json()
    assert all(g["allocated_milli"] == 1000 for g in node["gpus"])


def test_crashed_replica_restarts_with_event(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    cloud.api("POST", "/deployments", json={"name": "c", "service": "embeddings"})
    cloud.reconcile(2)
    rid = _dep(cloud, "c")["replica_list"][0]["id"]
    cloud.fake.crash(rid, exit_code=3)
    cloud.reconcile(1)
    dep = _dep(cloud, "c")
    assert dep["replica_list"][0]["status"] == "failed"
    assert "code 3" in dep["replica_list"][0]["message"]
    cloud.reconcile(2)
    dep = _dep(cloud, "c")
    assert dep["status"] == "ready"
    assert dep["replica_list"][0]["restarts"] == 1
    assert dep["replica_list"][0]["id"] == rid
    assert any(e["reason"] == "Crashed" for e in _events(cloud, "c"))


def test_scale_up_down_and_to_zero(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    cloud.api("POST", "/deployments", json={"name": "s", "service": "embeddings"})
    cloud.reconcile(2)
    cloud.api("PATCH", "/deployments/s", json={"replicas": 3})
    cloud.reconcile(2)
    assert _dep(cloud, "s")["ready_replicas"] == 3
    cloud.api("PATCH", "/deployments/s", json={"replicas": 1})
    cloud.reconcile(2)
    assert len(_dep(cloud, "s")["replica_list"]) == 1
    cloud.api("PATCH", "/deployments/s", json={"replicas": 0})
    cloud.reconcile(2)
    dep = _dep(cloud, "s")
    assert dep["status"] == "scaled_to_zero" and dep["replica_list"] == []


def test_rolling_update_keeps_a_ready_replica(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    cloud.api("POST", "/deployments", json={"name": "r", "service": "embeddings",
              "replicas": 2})
    cloud.reconcile(2)
    old = {r["id"] for r in _dep(cloud, "r")["replica_list"]}
    r = cloud.api("PATCH", "/deployments/r", json={"env": {"MODE": "v2"}})
    assert r.json()["generation"] == 2
    for _ in range(10):
        cloud.reconcile(1)
        dep = _dep(cloud, "r")
        assert dep["ready_replicas"] >= 1  # never a moment with nothing ready
        assert len(dep["replica_list"]) <= 3  # at most one above the desired count
    dep = _dep(cloud, "r")
    assert dep["status"] == "ready"
    now = {r["id"] for r in dep["replica_list"]}
    assert len(now) == 2 and not (now & old)
    assert all(r["generation"] == 2 for r in dep["replica_list"])


def test_cordoned_node_takes_no_new_work(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    assert cloud.api("PATCH", "/nodes/n1", json={"status": "cordoned"}).status_code == 200
    cloud.api("POST", "/deployments", json={"name": "k", "service": "embeddings"})
    cloud.reconcile(2)
    assert _dep(cloud, "k")["status"] == "pending"
    cloud.api("PATCH", "/nodes/n1", json={"status": "ready"})
    cloud.reconcile(2)
    assert _dep(cloud, "k")["status"] == "ready"


def test_usage_accrues_for_running_replicas(cloud: Cloud) -> None:
    cloud.add_fake_node("gpu-1", gpus=H100)
    cloud.api("POST", "/deployments", json={"name": "u", "service": "chat",
              "shape": "gpu.h100"})
    cloud.reconcile(2)
    bill = cloud.api("GET", "/usage").json()
    line = next(ln for ln in bill["lines"] if ln["name"] == "u")
    assert line["seconds"] > 0 and line["gpu_seconds"] > 0
    assert abs(line["cost_usd"] - line["seconds"] / 3600 * 2.5) < 1e-6
    cloud.api("DELETE", "/deployments/u")
    cloud.reconcile(2)
    after = cloud.api("GET", "/usage").json()
    line2 = next(ln for ln in after["lines"] if ln["name"] == "u")
    assert line2["seconds"] >= line["seconds"]
    assert after["total_usd"] >= bill["total_usd"] > 0


def test_utilization_and_metrics_for_operators(cloud: Cloud) -> None:
    cloud.add_fake_node("gpu-1", gpus=H100)
    cloud.api("POST", "/deployments", json={"name": "u", "service": "chat",
              "shape": "gpu.h100", "replicas": 2})
    cloud.reconcile(2)
    util = cloud.api("GET", "/utilization").json()
    assert util["gpus"] == 8 and util["allocated_gpus"] == 2.0
    assert util["gpu_allocation_pct"] == 25.0
    text = cloud.client.get("/metrics", headers=cloud.h()).text
    assert 'neocloud_gpus_allocated{gpu_type="H100",pool="-"} 2.0' in text
    assert 'neocloud_replicas{status="ready"} 2.0' in text
