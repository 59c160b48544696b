"""A control plane whose backend is ``ray`` (``NEOCLOUD_BACKEND=ray``, as ``neocloud up
--backend ray`` runs it): it registers no node of its own, a Ray node joins, and a job runs
there through the reconcilers, its logs read back through the API."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from neocloud.server.app import create_app
from neocloud.server.bootstrap import bootstrap
from tests.backends.conftest import HAVE_RAY, NO_RAY
from tests.server.helpers import Cloud, make_settings
from tests.server.workload_helpers import get, wait_job

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)]


@pytest.fixture
def ray_cloud(ray_cluster: Any, tmp_path: Path) -> Iterator[Cloud]:
    settings = make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'cp.db'}",
                             local=True, backend="ray", ray_address=ray_cluster.address,
                             ray_node_ip="127.0.0.2", job_stop_grace_s=5.0)
    app = create_app(settings, run_reconcilers=False)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    boot = bootstrap(app.state.db)
    assert boot.token
    try:
        yield Cloud(app=app, client=client, token=boot.token, fake=app.state.backends["fake"])
    finally:
        client.__exit__(None, None, None)
        app.state.backends["ray"].close()


def test_job_runs_on_a_joined_ray_node(ray_cloud: Cloud) -> None:
    import ray

    assert get(ray_cloud, "/nodes")["data"] == []  # no node of its own with Ray
    worker = next(n for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == "127.0.0.3")
    r = ray_cloud.api("POST", "/nodes/join", json={
        "name": "worker1", "address": "127.0.0.3", "ray_node_id": worker["NodeID"],
        "cpu_milli": 2000, "memory_mib": 4096})
    assert r.status_code == 201, r.text
    code = "import os; print('hello from', os.environ['NEOCLOUD_JOB'], flush=True)"
    r = ray_cloud.api("POST", "/jobs", json={"name": "hello", "shape": "cpu.small",
                                             "command": [sys.executable, "-c", code]})
    assert r.status_code == 201, r.text
    job = wait_job(ray_cloud, "hello", "succeeded", "failed", timeout_s=90)
    assert job["status"] == "succeeded", job
    handle_nodes = {w["node"] for w in job["worker_list"]}
    assert handle_nodes == {"worker1"}
    logs = ray_cloud.api("GET", "/jobs/hello/logs")
    assert logs.status_code == 200 and "hello from hello" in logs.text, logs.text
