"""A dev pod on a real ``neocloud up``, driven by the CLI: SSH with the user's key, the
shell through the control plane, stop/start keeping files, no process left behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest

from neocloud.podrun import find_sshd
from tests.e2e.cloudproc import CloudProcess
from tests.e2e.test_jobs_e2e import cli

pytestmark = pytest.mark.skipif(
    find_sshd() is None,
    reason="OpenSSH server (sshd) is not installed and could not be installed "
    "(apt-get install openssh-server)")


def pod_processes(home: Path) -> list[psutil.Process]:
    """podrun and sshd processes of pods of the cloud at ``home``."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if str(home / "pods") in cmd:
            out.append(p)
    return out


def test_pod_ssh_shell_stop_start(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    home = tmp_path / "home"
    cloud = CloudProcess(home).start()
    try:
        out = cli(cloud, "pod", "create", "dev", "--ssh-key", f"{key}.pub", "--env",
                  "STAGE=e2e").stdout
        assert "dev  running" in out and "ssh -p " in out
        pod = json.loads(cli(cloud, "pod", "status", "dev", "--json").stdout)
        ssh = pod["ssh"]
        res = subprocess.run(
            ["ssh", "-i", str(key), "-p", str(ssh["port"]), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
             "-o", "LogLevel=ERROR", f"{ssh['user']}@{ssh['host']}",
             'echo "stage=$STAGE" > notes.txt; cat notes.txt'],
            capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.strip() == "stage=e2e", res.stderr
        res = cli(cloud, "pod", "shell", "dev", stdin="echo sum=$((40+2)); exit 3\n",
                  check=False)
        assert res.returncode == 3 and "sum=42" in res.stdout
        cli(cloud, "pod", "stop", "dev")
        assert pod_processes(home) == []
        cli(cloud, "pod", "start", "dev")
        res = cli(cloud, "pod", "shell", "dev", "-c", "cat notes.txt")
        assert res.stdout.strip() == "stage=e2e"
        assert pod_processes(home)
    finally:
        cloud.stop()
    assert pod_processes(home) == []  # `neocloud up` stops its pods on the way out
