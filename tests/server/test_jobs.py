"""Jobs: every state transition, gang placement with distributed env, retries with
back-off, stop keeping logs, time limits, preemption, validation and tenancy.

Fake-backend tests run on both databases; real-process tests (local backend) on SQLite.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import Cloud, open_cloud
from tests.server.workload_helpers import (
    drive_until,
    error_of,
    get,
    open_local_cloud,
    reconcile_workloads,
    wait_job,
)

H100 = [{"type": "H100", "count": 8, "memory_mib": 81559}]
PY = sys.executable


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from open_local_cloud(tmp_path)


def _create(cloud: Cloud, token: str | None = None, **spec: object) -> dict:
    body = {"command": ["train"], **spec}
    r = cloud.api("POST", "/jobs", token, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _workers(cloud: Cloud, name: str) -> list[dict]:
    return get(cloud, f"/jobs/{name}")["worker_list"]


def _reasons(cloud: Cloud, name: str) -> list[str]:
    return [e["reason"] for e in get(cloud, f"/jobs/{name}/events")["data"]]


def _fake_worker_ids(cloud: Cloud, name: str) -> list[str]:
    """Workload ids the fake backend started for the job's current attempt, by rank."""
    job = get(cloud, f"/jobs/{name}")
    specs = [s for s in cloud.fake.started
             if s.env.get("NEOCLOUD_JOB") == name
             and s.env.get("NEOCLOUD_JOB_ATTEMPT") == str(job["attempt"])]
    return [s.workload_id for s in sorted(specs, key=lambda s: int(s.env["RANK"]))]


# -- transitions on simulated nodes (both databases) -------------------------------------


def test_queued_with_reason_then_runs_and_succeeds(cloud: Cloud) -> None:
    job = _create(cloud, name="train", shape="gpu.h100", workers=2)
    assert job["status"] == "queued" and job["attempt"] == 0
    reconcile_workloads(cloud)
    job = get(cloud, "/jobs/train")
    assert job["status"] == "queued"
    assert "no nodes" in job["reason"] or "GPU" in job["reason"]
    assert "Unschedulable" in _reasons(cloud, "train")

    cloud.add_fake_node("gpu-1", gpus=H100)
    reconcile_workloads(cloud)
    job = get(cloud, "/jobs/train")
    assert job["status"] == "running", job
    assert job["reason"] is None and job["attempt"] == 1
    workers = job["worker_list"]
    assert [w["rank"] for w in workers] == [0, 1]
    assert sorted(i for w in workers for i in w["gpu_indices"]) == [0, 1]
    node = get(cloud, "/nodes/gpu-1")
    assert sum(g["allocated_milli"] for g in node["gpus"]) == 2000

    for wid in _fake_worker_ids(cloud, "train"):
        cloud.fake.crash(wid, exit_code=0)
    reconcile_workloads(cloud)
    job = get(cloud, "/jobs/train")
    assert job["status"] == "succeeded" and job["exit_code"] == 0
    assert job["finished_at"] is not None
    assert [w["status"] for w in job["worker_list"]] == ["succeeded", "succeeded"]
    node = get(cloud, "/nodes/gpu-1")
    assert all(g["allocated_milli"] == 0 for g in node["gpus"])
    assert {"Created", "Scheduled", "Running", "Succeeded"} <= set(_reasons(cloud, "train"))
    bill = get(cloud, "/usage")
    line = next(ln for ln in bill["lines"] if ln["kind"] == "job" and ln["name"] == "train")
    assert line["gpu_seconds"] > 0 and line["cost_usd"] > 0


def test_gang_is_all_or_nothing_and_gets_distributed_env(cloud: Cloud) -> None:
    cloud.add_fake_node("gpu-1", gpus=H100)
    _create(cloud, name="big", shape="gpu.h100x8", workers=2)
    reconcile_workloads(cloud)
    job = get(cloud, "/jobs/big")
    assert job["status"] == "queued"
    assert "gang of 2 workers" in job["reason"]
    assert job["worker_list"] == []
    node = get(cloud, "/nodes/gpu-1")
    assert all(g["allocated_milli"] == 0 for g in node["gpus"])  # nothing held while waiting

    cloud.add_fake_node("gpu-2", gpus=H100)
    reconcile_workloads(cloud)
    job = get(cloud, "/jobs/big")
    assert job["status"] == "running"
    assert sorted(w["node"] for w in job["worker_list"]) == ["gpu-1", "gpu-2"]
    specs = [s for s in cloud.fake.started if s.env.get("NEOCLOUD_JOB") == "big"]
    assert sorted(s.env["RANK"] for s in specs) == ["0", "1"]
    for s in specs:
        assert s.env["WORLD_SIZE"] == "2" and s.env["NNODES"] == "2"
        assert s.env["NODE_RANK"] == s.env["RANK"] and s.env["LOCAL_RANK"] == "0"
        assert s.env["MASTER_ADDR"] == "127.0.0.1"
        assert s.env["CUDA_VISIBLE_DEVICES"] if "CUDA_VISIBLE_DEVICES" in s.env else True
        assert len(s.gpu_indices) == 8
    assert len({s.env["MASTER_PORT"] for s in specs}) == 1


def test_fails_twice_then_succeeds_with_backoff(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, name="flaky", max_retries=2)
    reconcile_workloads(cloud)
    for attempt, code in ((1, 3), (2, 4)):
        (wid,) = _fake_worker_ids(cloud, "flaky")
        cloud.fake.crash(wid, exit_code=code)
        reconcile_workloads(cloud)
        job = get(cloud, "/jobs/flaky")
        assert job["status"] == "retrying", job
        assert f"attempt {attempt} failed" in job["reason"]
        assert f"code {code}" in job["reason"] and f"retry {attempt} of 2" in job["reason"]
        assert job["failures"] == attempt
        reconcile_workloads(cloud, 2)  # back-off is 0 s in tests: queued, placed again
        job = get(cloud, "/jobs/flaky")
        assert job["status"] == "running" and job["attempt"] == attempt + 1
    (wid,) = _fake_worker_ids(cloud, "flaky")
    cloud.fake.crash(wid, exit_code=0)
    reconcile_workloads(cloud)
    job = get(cloud, "/jobs/flaky")
    assert job["status"] == "succeeded" and job["attempt"] == 3 and job["failures"] == 2
    assert _reasons(cloud, "flaky").count("Retrying") == 2


def test_retries_exhausted_fails_with_exit_code(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, name="bad", max_retries=1, workers=2)
    reconcile_workloads(cloud)
    for _ in range(2):
        wids = _fake_worker_ids(cloud, "bad")
        cloud.fake.crash(wids[1], exit_code=7)
        reconcile_workloads(cloud)
        reconcile_workloads(cloud, 2)
    job = get(cloud, "/jobs/bad")
    assert job["status"] == "failed", job
    assert job["exit_code"] == 7 and job["failures"] == 2
    assert "worker 1 exited with code 7" in job["reason"]
    # The healthy worker was stopped when its peer failed.
    assert [w["status"] for w in job["worker_list"]] == ["stopped", "failed"]
    assert "Failed" in _reasons(cloud, "bad")


def test_stop_running_and_queued_jobs(cloud: Cloud) -> None:
    cloud.add_fake_node("n1", cpu_milli=1000)
    _create(cloud, name="a", shape="cpu.medium")
    _create(cloud, name="b", shape="cpu.medium")
    reconcile_workloads(cloud)
    assert get(cloud, "/jobs/a")["status"] == "running"
    assert get(cloud, "/jobs/b")["status"] == "queued"
    r = cloud.api("POST", "/jobs/b/stop")
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    r = cloud.api("POST", "/jobs/a/stop")
    assert r.json()["status"] == "stopping"
    reconcile_workloads(cloud)
    job = get(cloud, "/jobs/a")
    assert job["status"] == "stopped" and job["worker_list"][0]["status"] == "stopped"
    assert get(cloud, "/nodes/n1")["allocated_cpu_milli"] == 0
    # Stopping again changes nothing; deleting a finished job frees its name.
    assert cloud.api("POST", "/jobs/a/stop").json()["status"] == "stopped"
    assert cloud.api("DELETE", "/jobs/a").status_code == 204
    assert cloud.api("GET", "/jobs/a").status_code == 404


def test_delete_of_live_job_is_refused(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, name="live")
    reconcile_workloads(cloud)
    r = cloud.api("DELETE", "/jobs/live")
    assert r.status_code == 409 and "stop it first" in error_of(r)["message"]


def test_time_limit_fails_the_job(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, name="slow", time_limit_s=0.2, max_retries=3)
    job = drive_until(cloud, lambda: (j := get(cloud, "/jobs/slow"))["status"] == "failed" and j,
                      timeout_s=20, what="time limit")
    assert "time limit of 0.2 s exceeded" in job["reason"]
    assert job["failures"] == 0  # a time limit is not retried


def test_higher_priority_job_preempts_preemptible_one(cloud: Cloud) -> None:
    cloud.add_fake_node("gpu-1", gpus=H100)
    _create(cloud, name="low", shape="gpu.h100x8", priority=0, preemptible=True)
    reconcile_workloads(cloud)
    assert get(cloud, "/jobs/low")["status"] == "running"
    _create(cloud, name="high", shape="gpu.h100x8", priority=10)
    reconcile_workloads(cloud, 3)
    assert get(cloud, "/jobs/high")["status"] == "running"
    low = get(cloud, "/jobs/low")
    assert low["status"] == "queued" and "GPU" in low["reason"]  # waits for room again
    assert low["failures"] == 0 and low["attempt"] == 1
    assert {"Preempted", "Requeued"} <= set(_reasons(cloud, "low"))
    events = get(cloud, "/jobs/low/events")["data"]
    assert any("preempted by job high" in e["message"] for e in events)
    # A non-preemptible job is never a victim.
    _create(cloud, name="higher", shape="gpu.h100x8", priority=20)
    cloud.api("POST", "/jobs/low/stop")
    reconcile_workloads(cloud, 2)
    assert get(cloud, "/jobs/high")["status"] == "running"
    assert get(cloud, "/jobs/higher")["status"] == "queued"


def test_bad_input_names_the_field(cloud: Cloud) -> None:
    cases = [
        ({"name": "x", "command": []}, 422, "command"),
        ({"name": "x", "command": ["a"], "workers": 0}, 422, "workers"),
        ({"name": "Bad_Name", "command": ["a"]}, 422, "name"),
        ({"name": "x", "command": ["a"], "env": {"1A": "b"}}, 400, "env"),
        ({"name": "x", "command": ["a"], "env": {"RANK": "3"}}, 400, "env"),
        ({"name": "x", "command": ["a"], "shape": "nope"}, 404, "shape"),
        ({"name": "x", "command": ["a"], "secrets": {"K": "missing"}}, 404, "secrets.K"),
        ({"name": "x", "command": ["a"], "volumes": [{"volume": "nope", "path": "/d"}]}, 404,
         "volumes.0.volume"),
        ({"name": "x", "command": ["a"], "volumes": [{"volume": "v", "path": "../up"}]}, 422,
         "volumes.0.path"),
        ({"name": "x", "command": ["a"], "time_limit_s": -1}, 422, "time_limit_s"),
    ]
    for body, status, param in cases:
        r = cloud.api("POST", "/jobs", json=body)
        assert r.status_code == status, (body, r.text)
        assert error_of(r)["param"] == param, (body, r.text)
    _create(cloud, name="x")
    r = cloud.api("POST", "/jobs", json={"name": "x", "command": ["a"]})
    assert r.status_code == 409 and error_of(r)["param"] == "name"
    r = cloud.api("GET", "/jobs/x/logs", params={"worker": 3})
    assert r.status_code in (200, 404)


def test_other_workspace_cannot_see_stop_or_read_logs(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, name="mine")
    reconcile_workloads(cloud)
    other = cloud.new_workspace("other")
    for method, path in (("GET", "/jobs/mine"), ("POST", "/jobs/mine/stop"),
                         ("GET", "/jobs/mine/logs"), ("GET", "/jobs/mine/events"),
                         ("DELETE", "/jobs/mine")):
        r = cloud.api(method, path, other)
        assert r.status_code == 404, (method, path, r.text)
        assert error_of(r)["type"] == "not_found_error"
    assert get(cloud, "/jobs", other)["data"] == []
    assert get(cloud, "/jobs/mine")["status"] == "running"
    viewer = cloud.api("POST", "/workspaces/default/tokens",
                       json={"name": "viewer", "role": "viewer"}).json()["token"]
    r = cloud.api("POST", "/jobs/mine/stop", viewer)
    assert r.status_code == 403


# -- real processes on this machine ------------------------------------------------------

COUNTER = textwrap.dedent("""
    import pathlib, sys
    p = pathlib.Path("data/count")
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    print(f"attempt {n}", flush=True)
    sys.exit(0 if n >= 3 else 3)
""")


def test_real_job_fails_twice_then_succeeds(local_cloud: Cloud) -> None:
    cloud = local_cloud
    assert cloud.api("POST", "/volumes", json={"name": "state"}).status_code == 201
    _create(cloud, name="flaky", command=[PY, "-c", COUNTER], max_retries=2,
            volumes=[{"volume": "state", "path": "/data"}])
    job = wait_job(cloud, "flaky", "succeeded", "failed")
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 3 and job["failures"] == 2
    for k in (1, 2, 3):
        text = cloud.api("GET", "/jobs/flaky/logs", params={"attempt": k, "worker": 0}).text
        assert f"attempt {k}" in text
    files = get(cloud, "/volumes/state/files")["data"]
    assert [f["path"] for f in files] == ["count"]


def test_real_job_failure_keeps_exit_code_and_last_lines(local_cloud: Cloud) -> None:
    cloud = local_cloud
    code = "import sys\nfor i in range(30): print('line', i)\nsys.exit(5)"
    _create(cloud, name="boom", command=[PY, "-c", code])
    job = wait_job(cloud, "boom", "failed")
    assert job["exit_code"] == 5 and job["worker_list"][0]["exit_code"] == 5
    assert job["message"].splitlines()[-1] == "line 29"
    assert "line 10" in job["message"] and "line 9\n" not in job["message"]  # the last 20
    r = cloud.api("POST", "/jobs", json={"name": "nocmd", "command": ["no-such-program-x"]})
    assert r.status_code == 201
    job = wait_job(cloud, "nocmd", "failed")
    assert job["exit_code"] == 127 and "cannot run" in job["message"]


STOPPABLE = textwrap.dedent("""
    import signal, sys, time
    def bye(*_):
        print("got SIGTERM, last words", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    for i in range(100000):
        print(f"tick {i}", flush=True)
        time.sleep(0.02)
""")


def test_stopped_job_keeps_every_log_line(local_cloud: Cloud) -> None:
    cloud = local_cloud
    _create(cloud, name="long", command=[PY, "-c", STOPPABLE], workers=2)
    drive_until(cloud, lambda: "tick 20" in cloud.api("GET", "/jobs/long/logs",
                                                      params={"worker": 1}).text,
                what="ticks")
    assert cloud.api("POST", "/jobs/long/stop").status_code == 200
    job = wait_job(cloud, "long", "stopped")
    assert [w["status"] for w in job["worker_list"]] == ["stopped", "stopped"]
    for rank in (0, 1):
        lines = cloud.api("GET", "/jobs/long/logs", params={"worker": rank}).text.splitlines()
        assert lines[-1] == "got SIGTERM, last words"
        ticks = [int(ln.split()[1]) for ln in lines if ln.startswith("tick ")]
        assert ticks == list(range(len(ticks))) and len(ticks) > 20  # none missing
    all_logs = cloud.api("GET", "/jobs/long/logs").text
    assert "==> worker 0 <==" in all_logs and "==> worker 1 <==" in all_logs


WAIT_FOR_GO = textwrap.dedent("""
    import os, pathlib, time
    starts = pathlib.Path("data/starts")
    with open(starts, "a") as f:
        f.write(f"{os.getpid()}\\n")
    print("started", flush=True)
    for _ in range(3000):
        if pathlib.Path("data/go").exists():
            break
        time.sleep(0.02)
    print("done", flush=True)
""")


def test_control_plane_restart_neither_loses_nor_duplicates_a_running_job(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'neocloud.db'}"
    cloud, client = open_cloud(tmp_path / "home", url, local=True)
    try:
        assert cloud.api("POST", "/volumes", json={"name": "data"}).status_code == 201
        _create(cloud, name="survivor", command=[PY, "-c", WAIT_FOR_GO],
                volumes=[{"volume": "data", "path": "data"}])
        job = wait_job(cloud, "survivor", "running")
        pid = job["worker_list"][0]["pid"]
        drive_until(cloud, lambda: "started" in cloud.api("GET", "/jobs/survivor/logs").text)
        token = cloud.token
    finally:
        client.__exit__(None, None, None)  # the control plane goes; the worker does not
    cloud2, client2 = open_cloud(tmp_path / "home", url, local=True)
    try:
        cloud2.token = token
        reconcile_workloads(cloud2, 3)
        job = get(cloud2, "/jobs/survivor")
        assert job["status"] == "running" and job["attempt"] == 1
        assert [w["pid"] for w in job["worker_list"]] == [pid]
        folder = next((tmp_path / "home" / "volumes").glob("*/data"))
        (folder / "go").write_text("")
        job = wait_job(cloud2, "survivor", "succeeded", "failed")
        assert job["status"] == "succeeded" and job["exit_code"] == 0
        assert len((folder / "starts").read_text().split()) == 1  # started once
        assert cloud2.api("GET", "/jobs/survivor/logs").text.split() == ["started", "done"]
    finally:
        client2.__exit__(None, None, None)


ALL_REDUCE = textwrap.dedent("""
    import os
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert rank == int(os.environ["RANK"]) and world == int(os.environ["WORLD_SIZE"]) == 2
    t = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    print(f"rank {rank} of {world}: sum {t.tolist()}", flush=True)
    assert t.tolist() == [3.0, 30.0]
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_two_worker_torch_distributed_all_reduce(local_cloud: Cloud) -> None:
    cloud = local_cloud
    _create(cloud, name="ddp", command=[PY, "-c", ALL_REDUCE], workers=2, time_limit_s=240)
    job = wait_job(cloud, "ddp", "succeeded", "failed", timeout_s=240)
    logs = cloud.api("GET", "/jobs/ddp/logs").text
    assert job["status"] == "succeeded", (job, logs)
    assert "rank 0 of 2: sum [3.0, 30.0]" in logs and "rank 1 of 2: sum [3.0, 30.0]" in logs
