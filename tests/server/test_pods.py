"""Dev pods: a real sshd per pod (SSH with the user's key), the shell through the control
plane (a real PTY over WebSocket), stop/start keeping files, billing only while running,
the idle timeout, validation and tenancy."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neocloud.podrun import find_sshd
from tests.server.helpers import Cloud
from tests.server.workload_helpers import (
    error_of,
    get,
    open_local_cloud,
    reconcile_workloads,
    wait_pod,
)

pytestmark = pytest.mark.skipif(
    find_sshd() is None,
    reason="OpenSSH server (sshd) is not installed and could not be installed "
    "(apt-get install openssh-server)")


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from open_local_cloud(tmp_path)


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def ssh(key: Path, pod: dict[str, Any], command: str) -> subprocess.CompletedProcess[str]:
    info = pod["ssh"]
    return subprocess.run(
        ["ssh", "-i", str(key), "-p", str(info["port"]), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
         "-o", "IdentitiesOnly=yes", f"{info['user']}@{info['host']}", command],
        capture_output=True, text=True, timeout=60)


def shell(cloud: Cloud, name: str, keys: bytes, token: str | None = None,
          ) -> tuple[str, dict[str, Any]]:
    """Type ``keys`` into the pod's shell; returns (terminal output, last text frame)."""
    out = b""
    with cloud.client.websocket_connect(f"/api/v1/pods/{name}/shell",
                                        headers=cloud.h(token)) as ws:
        first = json.loads(ws.receive_text())
        if first.get("type") != "ready":
            return "", first
        ws.send_text(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        ws.send_bytes(keys)
        for _ in range(10_000):
            msg = ws.receive()
            if msg.get("bytes"):
                out += msg["bytes"]
            elif msg.get("text"):
                return out.decode(errors="replace"), json.loads(msg["text"])
            else:
                break
    return out.decode(errors="replace"), {}


def pod_line(cloud: Cloud, name: str) -> dict[str, Any]:
    lines = get(cloud, "/usage")["lines"]
    return next(ln for ln in lines if ln["kind"] == "pod" and ln["name"] == name)


def test_ssh_shell_stop_start_keep_files_and_billing(local_cloud: Cloud, ssh_key: Path) -> None:
    cloud = local_cloud
    assert cloud.api("PUT", "/secrets/api-key", json={"value": "pod-secret-5150"}).status_code \
        == 201
    r = cloud.api("POST", "/pods", json={
        "name": "dev", "ssh_public_key": ssh_key.with_suffix(".pub").read_text(),
        "env": {"GREETING": "hello"}, "secrets": {"API_KEY": "api-key"}})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "queued" and r.json()["volume"] == "dev-home"
    pod = wait_pod(cloud, "dev", "running")
    assert pod["ssh"]["command"].startswith("ssh -p ")

    res = ssh(ssh_key, pod, 'pwd; echo "$GREETING"; printf %s "$API_KEY" | sha256sum; '
                            'echo kept > notes.txt')
    assert res.returncode == 0, res.stderr
    pwd, greeting, digest = res.stdout.splitlines()[:3]
    assert pwd.endswith("/dev-home")
    assert greeting == "hello"
    assert digest.split()[0] == hashlib.sha256(b"pod-secret-5150").hexdigest()

    text, end = shell(cloud, "dev", b"echo shell-$((6*7)) in $(basename $PWD); exit\n")
    assert "shell-42 in dev-home" in text and end == {"type": "exit", "code": 0}

    assert pod_line(cloud, "dev")["seconds"] > 0
    assert cloud.api("POST", "/pods/dev/stop").status_code == 200
    pod = wait_pod(cloud, "dev", "stopped")
    assert pod["ssh"] is None and "by the user" in pod["reason"]
    billed = pod_line(cloud, "dev")["seconds"]
    time.sleep(0.3)
    reconcile_workloads(cloud)
    assert pod_line(cloud, "dev")["seconds"] == billed  # not billed while stopped
    text, end = shell(cloud, "dev", b"exit\n")
    assert end["error"]["code"] == "conflict" and "not running" in end["error"]["message"]

    assert cloud.api("POST", "/pods/dev/start").status_code == 200
    pod = wait_pod(cloud, "dev", "running")
    res = ssh(ssh_key, pod, "cat notes.txt")
    assert res.returncode == 0 and res.stdout.strip() == "kept"
    assert pod_line(cloud, "dev")["seconds"] > billed

    logs = cloud.api("GET", "/pods/dev/logs").text
    assert "Accepted publickey" in logs and "pod-secret-5150" not in logs
    assert cloud.api("DELETE", "/pods/dev").status_code == 204
    for _ in range(200):
        reconcile_workloads(cloud)
        if cloud.api("GET", "/pods/dev").status_code == 404:
            break
        time.sleep(0.05)
    assert cloud.api("GET", "/pods/dev").status_code == 404
    vol = get(cloud, "/volumes/dev-home")  # the files outlive the pod
    assert vol["file_count"] == 1 and vol["size_bytes"] == len("kept\n")


def test_idle_timeout_stops_the_pod(local_cloud: Cloud) -> None:
    cloud = local_cloud
    r = cloud.api("POST", "/pods", json={"name": "idle", "idle_timeout_s": 0.5})
    assert r.status_code == 201, r.text
    wait_pod(cloud, "idle", "running")
    pod = wait_pod(cloud, "idle", "stopped", timeout_s=30)
    assert "idle for" in pod["reason"] and "timeout 0.5 s" in pod["reason"]
    events = get(cloud, "/pods/idle/events")["data"]
    assert "IdleTimeout" in [e["reason"] for e in events]


def test_transitions_on_a_simulated_node(cloud: Cloud) -> None:
    r = cloud.api("POST", "/pods", json={"name": "p", "shape": "gpu.h100"})
    assert r.status_code == 201
    reconcile_workloads(cloud)
    pod = get(cloud, "/pods/p")
    assert pod["status"] == "queued" and pod["reason"]
    cloud.add_fake_node("gpu-1", gpus=[{"type": "H100", "count": 8, "memory_mib": 81559}])
    reconcile_workloads(cloud, 2)
    pod = get(cloud, "/pods/p")
    assert pod["status"] == "running" and pod["node"] == "gpu-1"
    assert len(pod["gpu_indices"]) == 1
    (spec,) = [sp for sp in cloud.fake.started if sp.workload_id == pod["id"]]
    assert spec.command[1:3] == ["-m", "neocloud.podrun"]
    # The process ends on its own: failed, allocation freed; start brings it back.
    cloud.fake.crash(pod["id"], exit_code=2)
    reconcile_workloads(cloud)
    pod = get(cloud, "/pods/p")
    assert pod["status"] == "failed" and "code 2" in pod["reason"]
    assert all(g["allocated_milli"] == 0 for g in get(cloud, "/nodes/gpu-1")["gpus"])
    cloud.api("POST", "/pods/p/start")
    reconcile_workloads(cloud, 2)
    assert get(cloud, "/pods/p")["status"] == "running"
    cloud.api("POST", "/pods/p/stop")
    reconcile_workloads(cloud)
    assert get(cloud, "/pods/p")["status"] == "stopped"
    assert [p["name"] for p in get(cloud, "/pods")["data"]] == ["p"]


def test_bad_input_names_the_field(cloud: Cloud) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"name": "p", "ssh_public_key": "not a key"}, 422, "ssh_public_key"),
        ({"name": "p", "shape": "nope"}, 404, "shape"),
        ({"name": "p", "secrets": {"K": "nope"}}, 404, "secrets.K"),
        ({"name": "p", "idle_timeout_s": 0}, 422, "idle_timeout_s"),
        ({"name": "p", "env": {"PORT": "1"}}, 400, "env"),
    ]
    if importlib.util.find_spec("jupyterlab") is None:
        cases.append(({"name": "p", "jupyter": True}, 400, "jupyter"))
    for body, status, param in cases:
        r = cloud.api("POST", "/pods", json=body)
        assert r.status_code == status, (body, r.text)
        assert error_of(r)["param"] == param, (body, r.text)


def test_other_workspace_cannot_see_stop_shell_or_read_logs(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    assert cloud.api("POST", "/pods", json={"name": "mine"}).status_code == 201
    reconcile_workloads(cloud, 2)
    assert get(cloud, "/pods/mine")["status"] == "running"
    other = cloud.new_workspace("other")
    for method, path in (("GET", "/pods/mine"), ("POST", "/pods/mine/stop"),
                         ("POST", "/pods/mine/start"), ("GET", "/pods/mine/logs"),
                         ("GET", "/pods/mine/events"), ("DELETE", "/pods/mine")):
        r = cloud.api(method, path, other)
        assert r.status_code == 404, (method, path, r.text)
    assert get(cloud, "/pods", other)["data"] == []
    _text, end = shell(cloud, "mine", b"id\n", token=other)
    assert end["error"]["type"] == "not_found_error"
    _text, end = shell(cloud, "mine", b"id\n", token="nc-not-a-token")
    assert end["error"]["type"] == "authentication_error"
    # Nor can it mount the pod's volume into its own pod.
    r = cloud.api("POST", "/pods", other, json={
        "name": "thief", "volumes": [{"volume": "mine-home", "path": "/loot"}]})
    assert r.status_code == 404 and error_of(r)["param"] == "volumes.0.volume"
    assert get(cloud, "/pods/mine")["status"] == "running"
