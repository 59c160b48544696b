"""A hard-stopped budget refuses placement too, not only creates: work that was queued
before the month's spend reached the budget is not placed after it, even when room frees
up (both databases). The budget is read under the placement lock, beside the quota."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from neocloud.server.db.tables import Allocation, Shape, Workspace
from neocloud.server.metering.records import record_running
from tests.server.helpers import Cloud
from tests.server.workload_helpers import drive_until, get, reconcile_workloads

H100 = [{"type": "H100", "count": 1, "memory_mib": 81559}]


def _wait(cloud: Cloud, tok: str, name: str, status: str) -> None:
    drive_until(cloud, lambda: get(cloud, f"/jobs/{name}", tok)["status"] == status,
                timeout_s=30, what=f"job {name} to be {status}")


def _allocations_of_workspace(cloud: Cloud, ws_id: str) -> int:
    with cloud.app.state.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Allocation)
                            .where(Allocation.workspace_id == ws_id)) or 0)


def test_queued_work_is_not_placed_once_a_hard_stopped_budget_is_spent(cloud: Cloud) -> None:
    cloud.add_fake_node("gpu-a", gpus=H100)
    tok = cloud.new_workspace("team")
    with cloud.app.state.db.session() as s:
        ws_id = s.scalars(select(Workspace.id).where(Workspace.name == "team")).one()
    r = cloud.api("PUT", "/budget", tok, json={"monthly_micros": 1_000_000, "hard_stop": True})
    assert r.status_code == 200, r.text
    for name in ("first", "second"):  # one GPU: the second one waits for room
        r = cloud.api("POST", "/jobs", tok, json={"name": name, "command": ["train"],
                                                  "shape": "gpu.h100"})
        assert r.status_code == 201, r.text
    _wait(cloud, tok, "first", "running")
    reconcile_workloads(cloud, 2)
    assert get(cloud, "/jobs/second", tok)["status"] == "queued"
    # The month's spend reaches the budget ($1.00: 1,440 s of gpu.h100 at $2.50/h) ...
    with cloud.app.state.db.session() as s:
        now = datetime.now(UTC)
        record_running(s, workspace_id=ws_id, kind="replica", object_id="b" * 32,
                       name="earlier", shape=s.get(Shape, "gpu.h100"),
                       start=now - timedelta(seconds=1440), end=now)
    assert cloud.api("GET", "/budget", tok).json()["refusing"] is True
    # ... then the GPU is freed: the queued job must not take it.
    assert cloud.api("POST", "/jobs/first/stop", tok).status_code == 200
    _wait(cloud, tok, "first", "stopped")
    reconcile_workloads(cloud, 4)
    second = get(cloud, "/jobs/second", tok)
    assert second["status"] == "queued", second
    assert "budget" in (second.get("reason") or second.get("message") or ""), second
    assert _allocations_of_workspace(cloud, ws_id) == 0
    # Raising the budget lets it in: the budget was what held it.
    r = cloud.api("PUT", "/budget", tok, json={"monthly_micros": 5_000_000, "hard_stop": True})
    assert r.status_code == 200, r.text
    _wait(cloud, tok, "second", "running")
    assert _allocations_of_workspace(cloud, ws_id) == 1
