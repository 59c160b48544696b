"""Jobs on a real ``neocloud up``, driven by the CLI: a control-plane kill during a running
job neither loses nor duplicates it, and a secret's value shows nowhere neocloud writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from neocloud import Client
from tests.e2e.cloudproc import CloudProcess

SECRET = "hf_e2e_c4d1f00dbabe"
TRAIN = textwrap.dedent("""
    import os, pathlib, time
    data = pathlib.Path("data")
    with open(data / "starts", "a") as f:
        f.write(f"{os.getpid()}\\n")
    print("rank", os.environ["RANK"], "of", os.environ["WORLD_SIZE"], flush=True)
    print("token length", len(os.environ["HF_TOKEN"]), flush=True)
    for _ in range(6000):
        if (data / "go").exists():
            break
        time.sleep(0.02)
    print("done", flush=True)
""")


def cli(cloud: CloudProcess, *args: str, stdin: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEOCLOUD_HOME": str(cloud.home), "COLUMNS": "120"}
    for key in ("NEOCLOUD_URL", "NEOCLOUD_TOKEN"):
        env.pop(key, None)
    res = subprocess.run([sys.executable, "-m", "neocloud", *args], input=stdin, env=env,
                         capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res


def job_json(cloud: CloudProcess, name: str) -> dict:
    """The job as JSON, read through the SDK (polling with the CLI costs a process each)."""
    with Client(url=cloud.url, token=cloud.token) as sdk:
        return sdk.jobs.get(name).model_dump(mode="json")


def wait_for(fn, what: str, timeout_s: float = 90):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_during_a_running_job_and_no_secret_leak(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path / "home").start()
    outputs: list[str] = []
    try:
        def run(*args: str, stdin: str | None = None) -> str:
            res = cli(cloud, *args, stdin=stdin)
            outputs.extend([res.stdout, res.stderr])
            return res.stdout

        run("secret", "set", "hf-token", stdin=SECRET + "\n")
        run("volume", "create", "data")
        script = tmp_path / "train.py"
        script.write_text(TRAIN)
        run("volume", "upload", "data", str(script))
        run("job", "create", "train", "--workers", "2", "--secret", "HF_TOKEN=hf-token",
            "--volume", "data:data", "--", sys.executable, "data/train.py")
        job = wait_for(lambda: (j := job_json(cloud, "train"))["status"] == "running" and j,
                       "the job to run")
        pids = sorted(w["pid"] for w in job["worker_list"])
        with Client(url=cloud.url, token=cloud.token) as sdk:
            wait_for(lambda: sdk.jobs.logs("train").count("token length") == 2, "output")

        cloud.kill()  # SIGKILL: the control plane dies, its workers do not
        assert all(psutil.pid_exists(p) for p in pids)
        cloud.start()
        time.sleep(1.5)  # several reconcile passes
        job = job_json(cloud, "train")
        assert job["status"] == "running" and job["attempt"] == 1
        assert sorted(w["pid"] for w in job["worker_list"]) == pids

        go = tmp_path / "go"
        go.write_text("")
        run("volume", "upload", "data", str(go))
        job = wait_for(lambda: (j := job_json(cloud, "train"))["status"] in (
            "succeeded", "failed") and j, "the job to end")
        assert job["status"] == "succeeded", job
        starts = cli(cloud, "volume", "download", "data", "starts", str(tmp_path))
        assert starts.returncode == 0
        assert len((tmp_path / "starts").read_text().split()) == 2  # each worker once
        logs = run("job", "logs", "train")
        assert logs.count("done") == 2 and "token length 19" in logs

        run("job", "ls")
        run("secret", "ls")
        outputs.append(cli(cloud, "job", "status", "train").stdout)
        import httpx

        h = {"Authorization": f"Bearer {cloud.token}"}
        for path in ("/api/v1/events", "/api/v1/jobs", "/api/v1/secrets", "/api/v1/usage"):
            outputs.append(httpx.get(cloud.url + path, headers=h, timeout=10).text)
    finally:
        cloud.stop()
    outputs.append(cloud.log())
    for text in outputs:
        assert SECRET not in text
    db = (tmp_path / "home" / "neocloud.db").read_bytes()
    assert SECRET.encode() not in db


@pytest.mark.slow
def test_sigterm_requeues_a_running_job(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path / "home").start()
    try:
        cli(cloud, "job", "create", "sleeper", "--", sys.executable, "-c",
            "import time; time.sleep(600)")
        job = wait_for(lambda: (j := job_json(cloud, "sleeper"))["status"] == "running" and j,
                       "the job to run")
        pid = job["worker_list"][0]["pid"]
        assert cloud.stop() == 0
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        cloud.start()
        job = wait_for(lambda: (j := job_json(cloud, "sleeper"))["status"] == "running" and j,
                       "the job to run again")
        assert job["attempt"] == 2 and job["failures"] == 0
        status = json.loads(cli(cloud, "job", "status", "sleeper", "--json").stdout)
        assert status["status"] == "running" and status["reason"] is None
        cli(cloud, "job", "stop", "sleeper")
        wait_for(lambda: job_json(cloud, "sleeper")["status"] == "stopped", "the stop")
    finally:
        cloud.stop()
