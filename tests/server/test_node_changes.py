"""Nodes that change under their work, and node calls that race: each test is an input
that once broke the control plane.

* A node that joined again with fewer GPUs than its work holds, then a one-GPU job of
  higher priority: the preemption search raised ``ValueError: 4 is not in list`` on
  every pass (it freed the victim's GPU 4 on a node that lists GPUs 0..3 only).
* Two ``POST /nodes/join`` of one new name at the same instant (the joining server
  retried): the loser's insert hit the unique name and answered 409 ``already_exists``,
  though a join of a name the same server holds is a rejoin (200).
* A join that waited for the removal of its node (``DELETE /nodes/{name}`` then
  ``POST /nodes/join`` at once) updated the removed row.
* Right after a node joined again with another GPU model, work placed there was
  recorded with the old model (quotas per GPU model counted the wrong one).
* ``PATCH /nodes/{name}`` with new labels on a joined node dropped the label the join
  set (``ray.io/node-id``), so the node-health reconciler no longer noticed the node's
  loss.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from neocloud.models.nodes_join import NodeJoin
from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend, LocalBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.services import nodes as node_svc
from tests.server.helpers import Cloud, make_settings, race_in_order
from tests.server.workload_helpers import error_of, get, reconcile_workloads

RAY_ID = "ab" * 8
CALLERS = 8


def _spec(name: str = "b0", *, gpus: int = 0, gpu_type: str = "H100", **kw: Any
          ) -> dict[str, Any]:
    return {"name": name, "address": "127.0.0.1", "ray_node_id": RAY_ID,
            "cpu_milli": 256000, "memory_mib": 2_097_152,
            "gpus": [{"type": gpu_type, "count": gpus, "memory_mib": 81559}] if gpus else [],
            **kw}


def _join(cloud: Cloud, name: str = "b0", *, gpus: int = 0, **kw: Any) -> dict[str, Any]:
    r = cloud.api("POST", "/nodes/join", json=_spec(name, gpus=gpus, **kw))
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def _job(cloud: Cloud, name: str, shape: str, **spec: object) -> None:
    r = cloud.api("POST", "/jobs", json={"name": name, "command": ["train"], "shape": shape,
                                         **spec})
    assert r.status_code == 201, r.text


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    failed = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not failed, failed[0].getMessage()


def test_preempting_work_on_gpus_a_rejoined_node_no_longer_lists(
        ray_cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    _join(ray_cloud, gpus=8)
    _job(ray_cloud, "low", "gpu.h100x8", priority=0, preemptible=True)
    reconcile_workloads(ray_cloud)
    assert get(ray_cloud, "/jobs/low")["status"] == "running"
    _join(ray_cloud, gpus=4)  # GPUs 4..7 are gone; "low" still holds 0..7
    _job(ray_cloud, "high", "gpu.h100", priority=10)
    reconcile_workloads(ray_cloud, 3)
    _no_tracebacks(caplog)
    # Stopping "low" frees GPUs 0..3, which the node still has: "high" runs there.
    assert get(ray_cloud, "/jobs/low")["status"] == "queued"
    high = get(ray_cloud, "/jobs/high")
    assert high["status"] in ("starting", "running"), high
    check = get(ray_cloud, "/admin/check")
    assert check["ok"], check["violations"]


def test_two_joins_of_one_new_name_at_once_register_one_node(ray_cloud: Cloud) -> None:
    db = ray_cloud.app.state.db
    created: list[bool] = []

    def join(s: Session) -> None:
        _node, new = node_svc.join_node(s, spec=NodeJoin.model_validate(_spec(gpus=2)))
        created.append(new)

    first, second = race_in_order(db, join, join)
    assert first is None and second is None, (first, second)
    assert sorted(created) == [False, True]
    nodes = get(ray_cloud, "/nodes")["data"]
    assert [n["name"] for n in nodes] == ["b0"] and len(nodes[0]["gpus"]) == 2


def test_concurrent_joins_of_one_new_name_through_a_server(
        tmp_path: Path, db_url: str, live_server_factory: Any) -> None:
    app = create_app(make_settings(tmp_path / "home", db_url),
                     backends={"fake": FakeBackend()}, run_reconcilers=False)
    srv = live_server_factory(app)
    headers = {"Authorization": f"Bearer {bootstrap(app.state.db).token}"}
    for n in range(3):  # the race is narrow: a few names make it reliable
        def join(i: int, name: str = f"b{n}") -> int:
            with httpx.Client(timeout=30) as c:
                return c.post(f"{srv.url}/api/v1/nodes/join", headers=headers,
                              json=_spec(name, gpus=1 + i % 2)).status_code

        with cf.ThreadPoolExecutor(CALLERS) as ex:
            seen = Counter(ex.map(join, range(CALLERS)))
        assert seen == {201: 1, 200: CALLERS - 1}, seen


def test_a_join_racing_the_removal_of_its_node_registers_it_again(ray_cloud: Cloud) -> None:
    _join(ray_cloud, gpus=1)
    db = ray_cloud.app.state.db

    def remove(s: Session) -> None:
        node_svc.delete_node(s, name="b0")

    def join(s: Session) -> None:
        node_svc.join_node(s, spec=NodeJoin.model_validate(_spec(gpus=2)))

    first, second = race_in_order(db, remove, join)
    assert first is None and second is None, (first, second)
    node = get(ray_cloud, "/nodes/b0")
    assert node["status"] == "ready" and len(node["gpus"]) == 2
    _job(ray_cloud, "j", "gpu.h100")
    reconcile_workloads(ray_cloud)
    assert get(ray_cloud, "/jobs/j")["status"] in ("starting", "running")


def test_new_labels_keep_the_labels_a_join_set(ray_cloud: Cloud) -> None:
    _join(ray_cloud, labels={"zone": "a"}, price_per_hour_usd=2.5)
    r = ray_cloud.api("PATCH", "/nodes/b0", json={"labels": {"zone": "b", "rack": "7"}})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"zone": "b", "rack": "7", node_svc.RAY_NODE_ID_LABEL: RAY_ID,
                                  node_svc.PRICE_LABEL: "2.5"}
    # The operator may not rewrite what the join reported.
    r = ray_cloud.api("PATCH", "/nodes/b0",
                      json={"labels": {node_svc.RAY_NODE_ID_LABEL: "cd" * 8}})
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["param"] == "labels" and node_svc.RAY_NODE_ID_LABEL in err["message"]
    assert get(ray_cloud, "/nodes/b0")["labels"][node_svc.RAY_NODE_ID_LABEL] == RAY_ID


def test_a_second_copy_places_by_node_changes_the_first_made(
        ray_cloud: Cloud, tmp_path: Path, db_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Two control planes on one database: what one does to a node (rejoin smaller,
    fewer GPUs, cordon, remove and join anew) reaches the other's kept inventory before it
    places there."""
    if db_url.startswith("sqlite"):
        pytest.skip("several control-plane copies need PostgreSQL")
    fake = ray_cloud.fake
    other = create_app(make_settings(tmp_path / "home2", db_url),
                       backends={"fake": fake, "ray": fake, "local": LocalBackend()},
                       run_reconcilers=False)
    client = TestClient(other, raise_server_exceptions=False)
    client.__enter__()
    try:
        copy = Cloud(app=other, client=client, token=ray_cloud.token, fake=fake)
        _join(ray_cloud, gpus=8)
        _job(copy, "warm", "cpu.small")
        reconcile_workloads(copy)  # the copy's inventory now knows b0 with 8 free GPUs
        assert get(copy, "/jobs/warm")["status"] in ("starting", "running")
        _join(ray_cloud, gpus=2, cpu_milli=1000)  # smaller, through the first copy
        _job(copy, "big", "gpu.h100")  # 8 CPUs: no longer fits b0
        reconcile_workloads(copy)
        assert get(copy, "/jobs/big")["status"] == "queued"
        _join(ray_cloud, gpus=2)
        r = ray_cloud.api("PATCH", "/nodes/b0", json={"status": "cordoned"})
        assert r.status_code == 200, r.text
        reconcile_workloads(copy)
        assert get(copy, "/jobs/big")["status"] == "queued"
        r = ray_cloud.api("PATCH", "/nodes/b0", json={"status": "ready"})
        reconcile_workloads(copy)
        big = get(copy, "/jobs/big")
        assert big["status"] in ("starting", "running"), big
        _job(copy, "pair", "gpu.h100", workers=2)  # one GPU left on b0
        reconcile_workloads(copy)
        assert get(copy, "/jobs/pair")["status"] == "queued"
        _join(ray_cloud, "b1", gpus=1)
        reconcile_workloads(copy)
        assert get(copy, "/jobs/pair")["status"] in ("starting", "running")
        check = get(ray_cloud, "/admin/check")
        assert check["ok"], check["violations"]
        _no_tracebacks(caplog)
    finally:
        client.__exit__(None, None, None)


def test_the_checker_names_a_node_that_joined_again_smaller(
        ray_cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    r = ray_cloud.api("POST", "/nodes/join", json={**_spec(), "gpus": [
        {"type": "T4", "count": 1, "memory_mib": 15360}]})
    assert r.status_code == 201, r.text
    for name in ("p0", "p1"):
        r = ray_cloud.api("POST", "/pods", json={"name": name, "shape": "gpu.t4.quarter"})
        assert r.status_code == 201, r.text
    reconcile_workloads(ray_cloud, 2)
    assert get(ray_cloud, "/admin/check")["ok"]
    _join(ray_cloud, cpu_milli=1000)  # no GPU now, 1 CPU: the pods hold 2 and GPU 0
    reconcile_workloads(ray_cloud, 2)
    _no_tracebacks(caplog)
    assert [get(ray_cloud, f"/pods/{p}")["status"] for p in ("p0", "p1")] == ["running"] * 2
    check = get(ray_cloud, "/admin/check")
    messages = sorted(v["message"] for v in check["violations"])
    assert not check["ok"] and len(messages) == 2, messages
    assert {v["invariant"] for v in check["violations"]} == {"node_capacity"}
    assert messages[0].startswith("node b0: 2000/1000 millicores allocated")
    assert messages[1].startswith("node b0: GPU 0 is allocated but the node has no such GPU")
    assert all("joined again smaller" in m for m in messages)


@pytest.mark.parametrize("workers", [1, 2])
def test_work_placed_after_a_rejoin_with_another_gpu_model_counts_that_model(
        ray_cloud: Cloud, workers: int) -> None:
    """Found: right after ``b0`` joined again with A100s instead of H100s, a gang's
    allocations were written as H100 (the GPU types of the inventory kept between
    placements, not read again yet), so the workspace's A100 quota never counted them."""
    r = ray_cloud.api("POST", "/shapes", json={"name": "gpu.any", "cpu_milli": 1000,
                                               "memory_mib": 1024, "gpu_count": 1,
                                               "price_per_hour_usd": 1.0})
    assert r.status_code == 201, r.text
    _join(ray_cloud, gpus=2)
    _job(ray_cloud, "warm", "cpu.small")
    reconcile_workloads(ray_cloud)  # the kept inventory knows b0's GPUs as H100
    _join(ray_cloud, gpus=2, gpu_type="A100")
    _job(ray_cloud, "g", "gpu.any", workers=workers)
    reconcile_workloads(ray_cloud)
    assert get(ray_cloud, "/jobs/g")["status"] in ("starting", "running")
    assert get(ray_cloud, "/quota")["used_gpus"] == {"A100": float(workers)}
