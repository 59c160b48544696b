"""Secrets stay secret, end to end: a job prints its secret (plain, base64, URL-encoded)
and a sensitive-looking plain env value; afterwards no file under the data folder, no API
response and no CLI output holds them, and the data folder is private (0700 folders, 0600
files, the SQLite database with its -wal and -shm files included)."""

from __future__ import annotations

import base64
import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from neocloud.cli import output
from neocloud.cli.context import CliState
from neocloud.cli.main import app as cli_app
from neocloud.podrun import find_sshd
from tests.server.helpers import Cloud, open_cloud
from tests.server.workload_helpers import reconcile_workloads, wait_job

VALUE = "sk-live/4f9a+1c77=e2d84b6b"
PLAIN = "plain-key-93c1d0e5a7"
SECRET_FORMS = [VALUE, base64.b64encode(VALUE.encode()).decode(),
                base64.urlsafe_b64encode(VALUE.encode()).decode(), quote(VALUE, safe="")]
HAVE_SSHD = find_sshd() is not None
ALL_FORMS = [*SECRET_FORMS, PLAIN, base64.b64encode(PLAIN.encode()).decode()]

LEAKY = (
    "import base64, os, sys, urllib.parse\n"
    "v = os.environ['API_TOKEN']\n"
    "print('token is', v)\n"
    "print('base64', base64.b64encode(v.encode()).decode())\n"
    "print('urlsafe', base64.urlsafe_b64encode(v.encode()).decode())\n"
    "print('url', urllib.parse.quote(v, safe=''))\n"
    "print('plain env', os.environ['MY_API_KEY'], base64.b64encode(os.environ['MY_API_KEY']"
    ".encode()).decode(), file=sys.stderr)\n"
    "sys.exit(4)\n"
)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    """A cloud whose database lies inside its data folder, with this machine as a node."""
    home = tmp_path / "home"
    c, client = open_cloud(home, f"sqlite:///{home / 'neocloud.db'}", local=True,
                           job_stop_grace_s=5.0)
    try:
        yield c
    finally:
        client.__exit__(None, None, None)


class ThroughTestClient(httpx.BaseTransport):
    """Sends the CLI's requests to the in-process app through its test client."""

    def __init__(self, client: TestClient):
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.client.request(request.method, str(request.url), content=request.read(),
                                headers=dict(request.headers))
        return httpx.Response(r.status_code, headers=list(r.headers.multi_items()),
                              content=r.content)


def run_cli(cloud: Cloud, *args: str) -> str:
    state = CliState(url="http://testserver", token=cloud.token,
                     transport=ThroughTestClient(cloud.client))
    result = CliRunner().invoke(cli_app, list(args), obj=state)
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit | None), result.exception
    return result.output


def test_secret_values_are_nowhere(cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(output.out, "width", 300)
    monkeypatch.setattr(output.err, "width", 300)
    seen: list[str] = []

    def api(method: str, path: str, **kw: object) -> object:
        r = cloud.api(method, path, **kw)
        seen.append(r.text)
        return r

    assert api("PUT", "/secrets/api-token", json={"value": VALUE}).status_code == 201
    # A shape only the simulated node can hold: the deployment and the pod are not started
    # on this machine (no model is loaded), the job is.
    cloud.add_fake_node("sim")
    assert api("POST", "/shapes", json={"name": "sim.big", "cpu_milli": 200_000,
                                        "memory_mib": 1024, "price_per_hour_usd": 0}
               ).status_code == 201
    r = api("POST", "/jobs", json={
        "name": "leaky", "command": [sys.executable, "-c", LEAKY],
        "secrets": {"API_TOKEN": "api-token"}, "env": {"MY_API_KEY": PLAIN}})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["env"] == {"MY_API_KEY": "***"}
    assert any("--secret MY_API_KEY=" in w for w in created["warnings"]), created
    r = api("POST", "/deployments", json={
        "name": "d", "service": "embeddings", "shape": "sim.big",
        "secrets": {"API_TOKEN": "api-token"},
        "env": {"MY_API_KEY": PLAIN, "MODEL_DIR": "/models"}})
    assert r.status_code == 201, r.text
    assert r.json()["env"] == {"MY_API_KEY": "***", "MODEL_DIR": "/models"}
    assert r.json()["warnings"]
    if HAVE_SSHD:  # pods are refused on a machine without an OpenSSH server
        r = api("POST", "/pods", json={"name": "p", "shape": "sim.big",
                                       "env": {"DB_PASSWORD": PLAIN}})
        assert r.status_code == 201, r.text
        assert r.json()["env"] == {"DB_PASSWORD": "***"} and r.json()["warnings"]

    assert api("POST", "/volumes", json={"name": "data"}).status_code == 201
    assert api("PUT", "/volumes/data/files/sub/a.txt", content=b"hello").status_code in (200, 201)
    job = wait_job(cloud, "leaky", "failed")
    assert job["exit_code"] == 4 and "token is ***" in job["message"], job
    reconcile_workloads(cloud, 3)
    for form in SECRET_FORMS:  # the replica prints the values in every form
        (rid,) = [s.workload_id for s in cloud.fake.started
                  if s.env.get("NEOCLOUD_SERVED_MODEL_NAME") == "d"]
        cloud.fake.write(rid, f"replica saw {form} and {PLAIN}\n")

    logs = api("GET", "/jobs/leaky/logs").text
    for line in ("token is ***", "base64 ***", "urlsafe ***", "url ***", "plain env *** ***"):
        assert line in logs, logs
    for path in ("/jobs", "/jobs/leaky", "/jobs/leaky/events", "/jobs/leaky/logs?attempt=1",
                 "/deployments", "/deployments/d", "/deployments/d/events",
                 "/deployments/d/logs", "/events", "/secrets", "/secrets/api-token", "/usage",
                 "/audit", "/queue",
                 *(("/pods", "/pods/p", "/pods/p/events", "/pods/p/logs") if HAVE_SSHD else ())):
        r = api("GET", path)
        assert r.status_code == 200, (path, r.text)  # type: ignore[attr-defined]
        if path == "/deployments/d/logs":
            assert "replica saw *** and ***" in r.text  # type: ignore[attr-defined]

    seen.append(cloud.client.get("/openapi.json").text)

    cli_out = [
        run_cli(cloud, "job", "create", "from-cli", "--env", f"MY_API_KEY={PLAIN}",
                "--", sys.executable, "-c", "print(1)"),
        run_cli(cloud, "ls"), run_cli(cloud, "ls", "--json"), run_cli(cloud, "status"),
        run_cli(cloud, "status", "d"), run_cli(cloud, "status", "d", "--json"),
        run_cli(cloud, "logs", "d"), run_cli(cloud, "job", "ls"),
        run_cli(cloud, "job", "status", "leaky"), run_cli(cloud, "job", "status", "leaky",
                                                          "--json"),
        run_cli(cloud, "job", "logs", "leaky"), run_cli(cloud, "pod", "ls"),
    ]
    if HAVE_SSHD:
        cli_out += [run_cli(cloud, "pod", "status", "p"),
                    run_cli(cloud, "pod", "status", "p", "--json")]
    assert "Warning: env MY_API_KEY looks like a secret" in cli_out[0], cli_out[0]
    assert "--secret MY_API_KEY=" in cli_out[0]
    assert "MY_API_KEY=***" in cli_out[4], cli_out[4]
    reconcile_workloads(cloud, 2)

    for text in seen + cli_out + [caplog.text]:
        for form in ALL_FORMS:
            assert form not in text, (form, text[:2000])

    home = cloud.app.state.settings.home
    assert (home / "neocloud.db-wal").exists()  # the database is open, in WAL mode
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files) and any(p.name == "secret.key" for p in files)
    assert any(p.name == "a.txt" for p in files) and any(p.suffix == ".exit" for p in files)
    for path in files:
        data = path.read_bytes()
        for form in SECRET_FORMS:
            assert form.encode() not in data, (form, path)
        if path.suffix == ".log":
            assert PLAIN.encode() not in data, path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
    for folder in [home, *(p for p in home.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, (folder, oct(folder.stat().st_mode))


def test_a_data_folder_left_readable_is_tightened_at_start(tmp_path: Path) -> None:
    """A data folder from before (0755 folders, 0644 database and logs) is private once a
    control plane starts on it."""
    home = tmp_path / "home"
    (home / "logs" / "jobs").mkdir(parents=True, mode=0o755)
    os.chmod(home, 0o755)
    old_log = home / "logs" / "jobs" / "old.log"
    old_log.write_text("old\n")
    os.chmod(old_log, 0o644)
    db = home / "neocloud.db"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    c, client = open_cloud(home, f"sqlite:///{db}")
    try:
        assert c.api("GET", "/whoami").status_code == 200
        for p in [home, *home.rglob("*")]:
            want = 0o700 if p.is_dir() else 0o600
            assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))
    finally:
        client.__exit__(None, None, None)
