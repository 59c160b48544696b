"""The ``neocloud`` command against a real local cloud (``neocloud up`` in a process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.cloudproc import CloudProcess
from tests.e2e.test_local_cloud import ECHO


def cli(cloud: CloudProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEOCLOUD_HOME": str(cloud.home)}
    env.pop("NEOCLOUD_URL", None)
    env.pop("NEOCLOUD_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "neocloud", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_deploy_status_logs_usage_and_admin(tmp_path: Path) -> None:
    svc = tmp_path / "echo_service.py"
    svc.write_text(ECHO)
    cloud = CloudProcess(tmp_path / "home").start()
    try:
        # Logged in by `neocloud up` through the config file: no URL or token given.
        r = cli(cloud, "deploy", "echo", "--service", f"{svc}:Echo", "--json")
        assert r.returncode == 0, r.stderr
        dep = json.loads(r.stdout)
        assert dep["status"] == "ready" and dep["ready_replicas"] == 1
        r = cli(cloud, "status", "echo")
        assert r.returncode == 0 and "ready" in r.stdout and "Ready" in r.stdout
        r = cli(cloud, "ls", "--json")
        assert [d["name"] for d in json.loads(r.stdout)] == ["echo"]
        r = cli(cloud, "logs", "echo", "--tail", "20")
        assert r.returncode == 0
        r = cli(cloud, "usage", "--json")
        bill = json.loads(r.stdout)
        assert bill["lines"][0]["name"] == "echo"
        r = cli(cloud, "utilization", "--json")
        assert json.loads(r.stdout)["pools"][0]["nodes"] == 1
        r = cli(cloud, "quota", "set", "default", "--gpus", "H100=2", "--cpu-milli", "64000")
        assert r.returncode == 0, r.stderr
        q = json.loads(cli(cloud, "quota", "show", "--json").stdout)
        assert q["gpus"] == {"H100": 2} and q["used_cpu_milli"] == 500
        assert json.loads(cli(cloud, "queue", "--json").stdout) == []
        # Bad input: a message and exit code 2, no traceback.
        r = cli(cloud, "deploy", "x", "--service", "embeddings", "--env", "NOEQUALS")
        assert r.returncode == 2 and "Traceback" not in r.stderr and "--env" in r.stderr
        r = cli(cloud, "quota", "set", "default", "--gpus", "H100")
        assert r.returncode == 2 and "TYPE=COUNT" in r.stderr
        r = cli(cloud, "status", "nope")
        assert r.returncode == 1 and "not found" in r.stderr and "Traceback" not in r.stderr
        # Work no registered node can ever hold: a clear answer at once, not a long wait.
        r = cli(cloud, "deploy", "big", "--service", "embeddings", "--shape", "gpu.h100")
        assert r.returncode == 1 and "cannot start on any registered node" in r.stderr
        assert "Traceback" not in r.stderr
        r = cli(cloud, "rm", "echo")
        assert r.returncode == 0
    finally:
        assert cloud.stop() == 0
