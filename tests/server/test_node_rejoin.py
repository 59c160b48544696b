"""A node that joins again smaller than the work it holds (a server restarted with less
memory, a GPU gone): its work keeps running, placement sees the new size at once, and a
higher-priority workload looking for room is refused with a reason, never a crash.

The failing input came from the API fuzzer: ``POST /nodes/join`` for ``b0`` with less CPU
than its running jobs held, then a higher-priority job; the job reconciler raised
``ValueError: node b0 cannot take this change of CPU or memory`` on every pass.
"""

from __future__ import annotations

import pytest

from tests.server.helpers import Cloud
from tests.server.workload_helpers import get, reconcile_workloads


def _join(cloud: Cloud, *, cpu_milli: int, gpus: int = 0) -> None:
    r = cloud.api("POST", "/nodes/join", json={
        "name": "b0", "address": "127.0.0.1", "ray_node_id": "ab" * 8,
        "cpu_milli": cpu_milli, "memory_mib": 2_097_152,
        "gpus": [{"type": "H100", "count": gpus, "memory_mib": 81559}] if gpus else []})
    assert r.status_code in (200, 201), r.text


def _job(cloud: Cloud, name: str, shape: str, **spec: object) -> None:
    r = cloud.api("POST", "/jobs", json={"name": name, "command": ["train"], "shape": shape,
                                         **spec})
    assert r.status_code == 201, r.text


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    failed = [r for r in caplog.records if r.exc_info]
    assert not failed, failed[0].getMessage()


def test_rejoining_with_less_cpu_than_held_refuses_new_work_without_a_crash(
        ray_cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    _join(ray_cloud, cpu_milli=8000)
    _job(ray_cloud, "low", "cpu.large", priority=0, preemptible=True)  # 4000 millicores
    _job(ray_cloud, "kept", "cpu.large", priority=0)  # 4000, not preemptible
    reconcile_workloads(ray_cloud)
    assert get(ray_cloud, "/jobs/low")["status"] == "running"
    assert get(ray_cloud, "/jobs/kept")["status"] == "running"
    _join(ray_cloud, cpu_milli=1000)  # now 7000 millicores over
    node = get(ray_cloud, "/nodes/b0")
    assert node["cpu_milli"] == 1000 and node["allocated_cpu_milli"] == 8000
    # A small job does not fit on the overcommitted node (the inventory placement keeps
    # between passes saw the rejoin at once).
    _job(ray_cloud, "small", "cpu.small")
    reconcile_workloads(ray_cloud)
    assert get(ray_cloud, "/jobs/small")["status"] == "queued"
    # With "low" preempted, "kept" alone would still hold 3000 millicores more than the
    # node has: no room, and a reason.
    _job(ray_cloud, "high", "cpu.large", priority=10)
    reconcile_workloads(ray_cloud, 2)
    _no_tracebacks(caplog)
    high = get(ray_cloud, "/jobs/high")
    assert high["status"] == "queued" and "CPU" in high["reason"], high
    assert get(ray_cloud, "/jobs/low")["status"] == "running"


def test_rejoining_with_fewer_gpus_than_held_refuses_new_work_without_a_crash(
        ray_cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    _join(ray_cloud, cpu_milli=256000, gpus=8)
    _job(ray_cloud, "low", "gpu.h100x8", priority=0, preemptible=True)
    reconcile_workloads(ray_cloud)
    assert get(ray_cloud, "/jobs/low")["status"] == "running", get(ray_cloud, "/jobs/low")
    _join(ray_cloud, cpu_milli=256000, gpus=4)  # GPUs 4..7 are gone
    _job(ray_cloud, "high", "gpu.h100x8", priority=10)
    reconcile_workloads(ray_cloud, 2)
    _no_tracebacks(caplog)
    high = get(ray_cloud, "/jobs/high")
    assert high["status"] == "queued" and "GPU" in high["reason"], high
