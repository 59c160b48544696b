"""A running local cloud with data in it, and headless Chromium (Debian's ``chromium``)
driven by Playwright's Python client through ``executable_path``."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend, LocalBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.db.tables import Shape, Workspace
from neocloud.server.metering.records import record_running
from tests.conftest import LiveServer, free_port
from tests.server.helpers import make_settings

#: Screenshots of every page go here (ignored by git).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: The scripted chat model of the playground test (``file.py:Class``).
CHAT_SERVICE = f"{Path(__file__).with_name('chat_service.py')}:ScriptedChat"
#: Job workers that print their rank; then rank 0 fails with exit code 3 and rank 1 waits
#: (and is stopped by a signal when its gang fails).
FLAKY = ("import os, sys, time; print('worker', os.environ['RANK'], 'of', "
         "os.environ['WORLD_SIZE'], 'says hello', flush=True); "
         "time.sleep(1) if os.environ['RANK'] == '0' else time.sleep(120); sys.exit(3)")


@dataclass
class ConsoleCloud:
    url: str
    app: Any
    operator: str
    team_admin: str
    team_viewer: str
    rival: str

    def api(self, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}/api/v1{path}",
                             headers={"Authorization": f"Bearer {token}"}, timeout=60, **kw)


@pytest.fixture(scope="module")
def console_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleCloud]:
    home = tmp_path_factory.mktemp("console")
    settings = make_settings(home / "home", f"sqlite:///{home / 'neocloud.db'}", local=True,
                             usage_period_s=5.0)
    app = create_app(settings, backends={"local": LocalBackend(), "fake": FakeBackend()},
                     stop_replicas_on_exit=True)
    srv = LiveServer(app, free_port()).start()
    try:
        op = bootstrap(app.state.db).token
        assert op
        cloud = ConsoleCloud(url=srv.url, app=app, operator=op, team_admin="", team_viewer="",
                             rival="")
        for ws in ("team", "rival"):
            assert cloud.api("POST", "/workspaces", op, json={"name": ws}).status_code == 201
        tok = lambda ws, role: cloud.api("POST", f"/workspaces/{ws}/tokens", op, json={  # noqa: E731
            "name": f"{ws}-{role}", "role": role}).json()["token"]
        cloud.team_admin, cloud.team_viewer = tok("team", "admin"), tok("team", "viewer")
        cloud.rival = tok("rival", "admin")
        r = cloud.api("POST", "/nodes", op, json={
            "name": "gpu-1", "cpu_milli": 128000, "memory_mib": 1_000_000, "pool": "h100",
            "gpus": [{"type": "H100", "count": 8, "memory_mib": 81559}], "backend": "fake"})
        assert r.status_code == 201, r.text
        # GPU work on the fake node; once placed, the node is cordoned so that the CPU
        # work below runs on this machine's local node (the fake one runs nothing).
        assert cloud.api("POST", "/deployments", cloud.team_admin, json={
            "name": "trainer-llm", "service": "chat", "shape": "gpu.h100x8",
            "replicas": 0}).status_code == 201
        assert cloud.api("POST", "/deployments", cloud.rival, json={
            "name": "rival-secret-model", "service": "chat", "shape": "gpu.h100",
            "replicas": 3}).status_code == 201
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reps = cloud.api("GET", "/deployments/rival-secret-model", cloud.rival
                             ).json()["replica_list"]
            if len(reps) == 3 and all(r["node"] == "gpu-1" for r in reps):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"rival's replicas were not placed: {reps}")
        assert cloud.api("PATCH", "/nodes/gpu-1", op,
                         json={"status": "cordoned"}).status_code == 200
        # The team's real embeddings model on this machine.
        assert cloud.api("POST", "/deployments", cloud.team_admin, json={
            "name": "emb", "service": "embeddings", "shape": "cpu.small"}).status_code == 201
        assert cloud.api("POST", "/jobs", cloud.team_admin, json={
            "name": "etl", "shape": "cpu.small",
            "command": ["python", "-c", "print('rows done')"]}).status_code == 201
        # Two workers that print their rank and fail with exit code 3, retried once.
        assert cloud.api("POST", "/jobs", cloud.team_admin, json={
            "name": "flaky", "shape": "cpu.small", "workers": 2, "max_retries": 1,
            "command": ["python", "-c", FLAKY]}).status_code == 201
        assert cloud.api("PUT", "/budget", cloud.team_admin, json={
            "monthly_micros": 10_000_000, "thresholds": [50, 80, 100]}).status_code == 200
        with app.state.db.session() as s:  # some GPU time of the team this month
            ws_id = s.query(Workspace.id).filter(Workspace.name == "team").scalar()
            now = datetime.now(UTC)
            record_running(s, workspace_id=ws_id, kind="replica", object_id="f" * 32,
                           name="trainer-llm", shape=s.get(Shape, "gpu.h100x8"),
                           start=now - timedelta(minutes=20), end=now)
        deadline = time.monotonic() + 240

        def wait(path: str, done: Any) -> None:
            while time.monotonic() < deadline:
                d = cloud.api("GET", path, cloud.team_admin).json()
                if done(d):
                    return
                time.sleep(0.5)
            raise AssertionError(f"{path} never got there: {d}")

        # The local node has room for few cpu.small workloads: the jobs end first.
        wait("/jobs/etl", lambda d: d["status"] == "succeeded")
        wait("/jobs/flaky", lambda d: d["status"] == "failed")
        # A chat deployment answering in milliseconds (a scripted model, no weights).
        assert cloud.api("POST", "/deployments", cloud.team_admin, json={
            "name": "chatbot", "service": CHAT_SERVICE, "shape": "cpu.small"}
        ).status_code == 201
        r = cloud.api("POST", "/pods", cloud.team_admin, json={
            "name": "dev", "shape": "cpu.small", "idle_timeout_s": 3600})
        assert r.status_code == 201, r.text
        wait("/deployments/emb", lambda d: d["ready_replicas"] == 1)
        wait("/deployments/chatbot", lambda d: d["ready_replicas"] == 1)
        wait("/pods/dev", lambda d: d["status"] == "running")
        yield cloud
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()
