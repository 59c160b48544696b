"""The whole local cloud as a user runs it: ``neocloud up`` in a process, a real serving
runtime per replica, the gateway, the SDK and the official OpenAI client."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from neocloud import Client
from tests.e2e.cloudproc import CloudProcess

ECHO = textwrap.dedent('''
    import os
    from neocloud.serving import Service, endpoint

    class Echo(Service):
        def setup(self):
            self.pid = os.getpid()

        @endpoint
        def echo(self, text: str) -> dict:
            return {"text": text, "pid": self.pid}
''')


def serving_processes(port: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "neocloud.serving" in cmd and str(port) in cmd:
            out.append(p)
    return out


def wait_for(fn, timeout_s: float = 90, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def echo_file(tmp_path: Path) -> Path:
    path = tmp_path / "echo_service.py"
    path.write_text(ECHO)
    return path


def test_restart_adopts_running_replica(tmp_path: Path, echo_file: Path) -> None:
    cloud = CloudProcess(tmp_path / "home").start()
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        sdk.deployments.create("echo", f"{echo_file}:Echo", replicas=1)
        dep = sdk.deployments.wait_ready("echo", timeout_s=90)
        rep = dep.replica_list[0]
        h = {"Authorization": f"Bearer {cloud.token}"}
        r = httpx.post(f"{cloud.url}/endpoints/echo/echo", json={"text": "hi"}, headers=h)
        assert r.status_code == 200, r.text
        pid = r.json()["pid"]
        assert pid == rep.pid or psutil.Process(rep.pid).children()  # the replica answers

        cloud.kill()  # the control plane dies; the replica does not
        assert psutil.pid_exists(rep.pid)
        r = httpx.post(f"http://127.0.0.1:{rep.port}/echo", json={"text": "still"})
        assert r.status_code == 200

        cloud.start()
        sdk = Client(url=cloud.url, token=cloud.token)
        time.sleep(2)  # several reconcile passes
        dep2 = sdk.deployments.get("echo")
        assert [r.id for r in dep2.replica_list] == [rep.id]
        assert dep2.replica_list[0].pid == rep.pid and dep2.status.value == "ready"
        assert len(serving_processes(rep.port)) == 1  # no duplicate process
        r = httpx.post(f"{cloud.url}/endpoints/echo/echo", json={"text": "again"}, headers=h)
        assert r.status_code == 200 and r.json()["pid"] == pid
        assert sdk.whoami().workspace.name == "default"  # token and workspace kept
    finally:
        code = cloud.stop()
    assert code == 0
    wait_for(lambda: not psutil.pid_exists(rep.pid)
             or psutil.Process(rep.pid).status() == psutil.STATUS_ZOMBIE,
             timeout_s=30, what="replica to stop")


def test_crash_restarts_and_delete_leaves_no_process(tmp_path: Path, echo_file: Path) -> None:
    cloud = CloudProcess(tmp_path / "home").start()
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        sdk.deployments.create("echo", f"{echo_file}:Echo", replicas=2)
        dep = sdk.deployments.wait_ready("echo", timeout_s=90)
        pids = {r.pid for r in dep.replica_list}
        victim = dep.replica_list[0]
        psutil.Process(victim.pid).kill()
        wait_for(lambda: any(r.restarts >= 1 and r.status.value == "ready"
                             for r in sdk.deployments.get("echo").replica_list),
                 what="crashed replica to come back")
        events = [e.reason for e in sdk.deployments.events("echo")]
        assert "Crashed" in events
        logs = sdk.deployments.logs("echo")
        assert "replica" in logs
        dep = sdk.deployments.get("echo")
        pids |= {r.pid for r in dep.replica_list}
        sdk.deployments.delete("echo")
        wait_for(lambda: not sdk.deployments.list(), what="deployment to go away")
        alive = [p for p in pids if p and psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert alive == []
    finally:
        cloud.stop()


@pytest.mark.slow
def test_real_model_through_gateway_with_openai_client(tmp_path: Path) -> None:
    from openai import OpenAI

    cloud = CloudProcess(tmp_path / "home").start()
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        sdk.deployments.create("minilm", "embeddings", replicas=1)
        sdk.deployments.wait_ready("minilm", timeout_s=300)
        oai = OpenAI(base_url=f"{cloud.url}/v1", api_key=cloud.token)
        resp = oai.embeddings.create(model="minilm", input=["a cat sat", "a kitten sat",
                                                             "stock market report"])
        v = [d.embedding for d in resp.data]
        assert len(v) == 3 and len(v[0]) == 384
        dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
        assert dot(v[0], v[1]) > dot(v[0], v[2])
        assert resp.usage.prompt_tokens > 0
        assert [m.id for m in oai.models.list().data] == ["minilm"]
        time.sleep(1.5)
        bill = sdk.usage.bill()
        tokens = [ln for ln in bill.lines if ln.kind == "tokens"]
        assert tokens and tokens[0].prompt_tokens >= resp.usage.prompt_tokens
        assert bill.replica_seconds > 0 and bill.total_usd > 0
    finally:
        assert cloud.stop() == 0
