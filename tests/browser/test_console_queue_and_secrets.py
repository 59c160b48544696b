"""The console's queue page with waiting work and its reasons, and the workspace page with
secret names, in real headless Chromium (the main console tests' cloud has nothing waiting
and no secret). Members see only their own workspace's queue; operators see every one;
a secret's value never reaches the page. Screenshots go to ``test-artifacts/browser/``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from tests.browser.conftest import ARTIFACTS
from tests.conftest import LiveServer, free_port
from tests.server.helpers import make_settings

pytestmark = pytest.mark.slow

SECRET_VALUE = "hf_live_7c1e9a2b44d0f3"


@dataclass
class QueueCloud:
    url: str
    operator: str
    team: str
    rival: str

    def api(self, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}/api/v1{path}",
                             headers={"Authorization": f"Bearer {token}"}, timeout=60, **kw)


@pytest.fixture(scope="module")
def queue_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueCloud]:
    """One simulated node with 2 H100; team's quota is 1 GPU, so of two one-GPU jobs one
    runs and one waits on the quota; a rival's deployment waits for GPUs of a type that no
    node has."""
    home: Path = tmp_path_factory.mktemp("console-queue")
    app = create_app(make_settings(home / "home", f"sqlite:///{home / 'neocloud.db'}"),
                     backends={"fake": FakeBackend()})
    srv = LiveServer(app, free_port()).start()
    try:
        op = bootstrap(app.state.db).token
        assert op
        cloud = QueueCloud(url=srv.url, operator=op, team="", rival="")
        for ws in ("team", "rival"):
            assert cloud.api("POST", "/workspaces", op, json={"name": ws}).status_code == 201
        cloud.team = cloud.api("POST", "/workspaces/team/tokens", op, json={
            "name": "team-admin", "role": "admin"}).json()["token"]
        cloud.rival = cloud.api("POST", "/workspaces/rival/tokens", op, json={
            "name": "rival-admin", "role": "admin"}).json()["token"]
        r = cloud.api("POST", "/nodes", op, json={
            "name": "gpu-1", "cpu_milli": 64000, "memory_mib": 512_000,
            "gpus": [{"type": "H100", "count": 2, "memory_mib": 81559}], "backend": "fake"})
        assert r.status_code == 201, r.text
        assert cloud.api("PUT", "/workspaces/team/quota", op,
                         json={"gpus_total": 1}).status_code == 200
        for name in ("trainer", "waiter"):
            r = cloud.api("POST", "/jobs", cloud.team, json={
                "name": name, "shape": "gpu.h100", "command": ["train"]})
            assert r.status_code == 201, r.text
            time.sleep(0.5)  # trainer is placed first
        r = cloud.api("POST", "/deployments", cloud.rival, json={
            "name": "rival-llm", "service": "chat", "shape": "gpu.a10", "replicas": 1})
        assert r.status_code == 201, r.text
        r = cloud.api("PUT", "/secrets/hf-token", cloud.team, json={"value": SECRET_VALUE})
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            queued = cloud.api("GET", "/queue?all_workspaces=true", op).json()["data"]
            if {q["name"] for q in queued if q["reason"]} >= {"waiter", "rival-llm"}:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the queue never showed both waiting workloads: {queued}")
        yield cloud
    finally:
        srv.stop()


def _login(browser: Any, cloud: QueueCloud, token: str) -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 800}).new_page()
    page.goto(f"{cloud.url}/ui/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/deployments")
    return page


def _rows(page: Any) -> dict[str, str]:
    """Name -> the whole row's text, of every row of the queue table (its column
    headed Name: a Workspace column comes first only where several workspaces show)."""
    heads = page.locator("#queue th").all_inner_texts()
    name = heads.index("Name")
    rows = page.locator("#queue tr")
    out = {}
    for i in range(1, rows.count()):  # row 0 is the header
        cells = rows.nth(i).locator("td")
        if cells.count() == len(heads):
            out[cells.nth(name).inner_text()] = rows.nth(i).inner_text()
    return out


def test_queue_page_shows_waiting_work_with_its_reason(
        browser: Any, queue_cloud: QueueCloud) -> None:
    cloud = queue_cloud
    (waiter,) = [q for q in cloud.api("GET", "/queue", cloud.team).json()["data"]
                 if q["name"] == "waiter"]
    assert "quota" in waiter["reason"].lower(), waiter
    page = _login(browser, cloud, cloud.team)
    page.goto(f"{cloud.url}/ui/queue")
    # A member sees one workspace: no Workspace column.
    assert "Workspace" not in page.locator("#queue th").all_inner_texts()
    rows = _rows(page)
    assert "waiter" in rows and waiter["reason"] in rows["waiter"], rows
    assert "job" in rows["waiter"]
    assert "trainer" not in rows  # it runs: not waiting
    body = page.locator("body").inner_text()
    assert "rival" not in body  # another workspace's waiting work never appears
    page.screenshot(path=str(ARTIFACTS / "page-queue-with-work.png"), full_page=True)
    page.context.close()

    op = _login(browser, cloud, cloud.operator)
    op.goto(f"{cloud.url}/ui/queue")
    rows = _rows(op)
    (rival,) = [q for q in cloud.api("GET", "/queue", cloud.rival).json()["data"]
                if q["name"] == "rival-llm"]
    assert "waiter" in rows and "rival-llm" in rows, rows
    assert rival["reason"] in rows["rival-llm"], (rival, rows)
    assert "rival" in rows["rival-llm"] and "team" in rows["waiter"]  # workspace column
    assert op.locator("#queue th").all_inner_texts()[0] == "Workspace"
    op.screenshot(path=str(ARTIFACTS / "operator-queue.png"), full_page=True)
    op.context.close()


def test_workspace_page_lists_secret_names_never_values(
        browser: Any, queue_cloud: QueueCloud) -> None:
    cloud = queue_cloud
    page = _login(browser, cloud, cloud.team)
    page.goto(f"{cloud.url}/ui/workspace")
    assert "hf-token" in page.locator("body").inner_text()
    # One GPU of a quota of one reads "1" beside "1" (not "1.0").
    quota = page.locator("#quota tr", has_text="GPUs (all types)").inner_text()
    assert quota.split("\t")[1:] == ["1", "1"], quota
    assert SECRET_VALUE not in page.content()
    page.screenshot(path=str(ARTIFACTS / "page-workspace-with-secret.png"), full_page=True)
    page.context.close()
    rival = _login(browser, cloud, cloud.rival)
    rival.goto(f"{cloud.url}/ui/workspace")
    assert "hf-token" not in rival.locator("body").inner_text()
    rival.context.close()
