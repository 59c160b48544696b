"""A node registered with two GPU types is accepted by the API, then breaks every
scheduling pass (the scheduler's index raises ValueError), so no workload of any workspace
is placed anywhere again."""

from __future__ import annotations

from tests.server.helpers import Cloud
from tests.server.workload_helpers import reconcile_workloads


def test_node_with_two_gpu_types_is_refused_or_does_not_wedge_scheduling(cloud: Cloud) -> None:
    cloud.add_fake_node("good")
    r = cloud.api("POST", "/nodes", json={
        "name": "mixed", "cpu_milli": 1000, "memory_mib": 1000, "backend": "fake",
        "gpus": [{"type": "A10", "count": 1, "memory_mib": 1},
                 {"type": "H100", "count": 1, "memory_mib": 1}]})
    if r.status_code >= 400:  # refused at the API: fine, with the field named
        assert r.status_code in (400, 422) and r.json()["error"]["param"].startswith("gpus")
        return
    assert cloud.api("POST", "/jobs", json={"name": "j", "command": ["x"]}).status_code == 201
    reconcile_workloads(cloud, 3)
    # the healthy node has plenty of room: the job must be placed there
    assert cloud.api("GET", "/jobs/j").json()["status"] != "queued"
