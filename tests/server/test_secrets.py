"""Secrets: encrypted at rest, write-only on the API, injected by reference into jobs,
pods and deployments, never leaked (API output, events, logs, errors), workspace-scoped."""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from neocloud.server.crypto import SecretBox, SecretKeyError, key_from_setting
from neocloud.server.db.tables import Secret
from tests.server.helpers import Cloud
from tests.server.workload_helpers import (
    error_of,
    get,
    open_local_cloud,
    reconcile_workloads,
    wait_job,
)

VALUE = "sk-live-4f9a1c77e2d84b6b"


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from open_local_cloud(tmp_path)


def test_set_list_get_delete_never_return_the_value(cloud: Cloud) -> None:
    r = cloud.api("PUT", "/secrets/HF_TOKEN", json={"value": VALUE})
    assert r.status_code == 201 and r.json()["version"] == 1
    assert VALUE not in r.text
    r = cloud.api("PUT", "/secrets/HF_TOKEN", json={"value": VALUE + "-2"})
    assert r.status_code == 200 and r.json()["version"] == 2
    listed = get(cloud, "/secrets")["data"]
    assert [s["name"] for s in listed] == ["HF_TOKEN"]
    assert set(listed[0]) == {"name", "version", "created_at", "updated_at"}
    assert get(cloud, "/secrets/HF_TOKEN")["version"] == 2
    assert cloud.api("DELETE", "/secrets/HF_TOKEN").status_code == 204
    assert cloud.api("GET", "/secrets/HF_TOKEN").status_code == 404


def test_encrypted_at_rest_with_the_key_file(cloud: Cloud, tmp_path: Path) -> None:
    cloud.api("PUT", "/secrets/db-pass", json={"value": VALUE})
    db = cloud.app.state.db
    with db.session() as s:
        row = s.scalars(select(Secret)).one()
        stored, owner = row.ciphertext, f"{row.workspace_id}/{row.name}"
    assert VALUE not in stored and stored.startswith("v1:")
    key_file = tmp_path / "home" / "secret.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    box = SecretBox.for_home(tmp_path / "home", None)
    assert box.decrypt(stored, owner=owner) == VALUE
    with pytest.raises(SecretKeyError):  # bound to its row
        box.decrypt(stored, owner="another-workspace/db-pass")
    with pytest.raises(SecretKeyError) as exc:  # another key
        SecretBox(key_from_setting("another key")).decrypt(stored, owner=owner)
    assert VALUE not in str(exc.value)
    raw = Path(db.url.split("///", 1)[1]).read_bytes() if db.url.startswith("sqlite") else b""
    assert VALUE.encode() not in raw


def test_key_from_setting() -> None:
    import base64

    raw = os.urandom(32)
    assert key_from_setting(base64.urlsafe_b64encode(raw).decode()) == raw
    assert len(key_from_setting("a passphrase")) == 32
    box = SecretBox(key_from_setting("a passphrase"))
    assert box.decrypt(box.encrypt("x", owner="w/n"), owner="w/n") == "x"


def test_bad_input_names_the_field_without_echoing_the_value(cloud: Cloud) -> None:
    r = cloud.api("PUT", "/secrets/9bad", json={"value": VALUE})
    assert r.status_code == 400 and error_of(r)["param"] == "name" and VALUE not in r.text
    r = cloud.api("PUT", "/secrets/ok", json={"value": ""})
    assert r.status_code == 422 and error_of(r)["param"] == "value"
    big = VALUE * 5000
    r = cloud.api("PUT", "/secrets/ok", json={"value": big})
    assert r.status_code == 422 and error_of(r)["param"] == "value" and VALUE not in r.text
    r = cloud.api("PUT", "/secrets/ok", json={"value": VALUE, "extra": 1})
    assert r.status_code == 422 and VALUE not in r.text
    r = cloud.api("PUT", "/secrets/ok", json={"value": 12})
    assert r.status_code == 422 and error_of(r)["param"] == "value"


def test_tenancy(cloud: Cloud) -> None:
    cloud.api("PUT", "/secrets/shared-name", json={"value": VALUE})
    other = cloud.new_workspace("other")
    assert get(cloud, "/secrets", other)["data"] == []
    assert cloud.api("GET", "/secrets/shared-name", other).status_code == 404
    assert cloud.api("DELETE", "/secrets/shared-name", other).status_code == 404
    r = cloud.api("POST", "/jobs", other, json={"name": "steal", "command": ["env"],
                                                "secrets": {"X": "shared-name"}})
    assert r.status_code == 404 and error_of(r)["param"] == "secrets.X"
    r = cloud.api("POST", "/deployments", other, json={
        "name": "steal", "service": "embeddings", "secrets": {"X": "shared-name"}})
    assert r.status_code == 404 and error_of(r)["param"] == "secrets.X"
    # The same name in another workspace is another secret.
    assert cloud.api("PUT", "/secrets/shared-name", other, json={"value": "x"}).status_code \
        == 201
    assert get(cloud, "/secrets/shared-name")["version"] == 1
    viewer = cloud.api("POST", "/workspaces/default/tokens",
                       json={"name": "v", "role": "viewer"}).json()["token"]
    assert cloud.api("PUT", "/secrets/x", viewer, json={"value": "x"}).status_code == 403


def test_injected_into_deployment_replicas(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    cloud.api("PUT", "/secrets/model-key", json={"value": VALUE})
    r = cloud.api("POST", "/deployments", json={
        "name": "d", "service": "embeddings", "secrets": {"MODEL_KEY": "model-key"}})
    assert r.status_code == 201, r.text
    assert r.json()["secrets"] == {"MODEL_KEY": "model-key"}
    cloud.reconcile(2)
    (spec,) = [s for s in cloud.fake.started if s.env.get("NEOCLOUD_SERVED_MODEL_NAME") == "d"]
    assert spec.env["MODEL_KEY"] == VALUE
    r = cloud.api("PATCH", "/deployments/d", json={"secrets": {"K": "missing"}})
    assert r.status_code == 404 and error_of(r)["param"] == "secrets.K"


LEAKY = (
    "import os, sys\n"
    "print('token is', os.environ['API_TOKEN'], flush=True)\n"
    "sys.exit(4)\n"
)


def test_value_never_leaks(local_cloud: Cloud, tmp_path: Path,
                           caplog: pytest.LogCaptureFixture) -> None:
    """A job prints its secret and fails; the value shows nowhere neocloud writes."""
    cloud = local_cloud
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def api(method: str, path: str, **kw: object) -> object:
        r = cloud.api(method, path, **kw)
        seen.append(r.text)
        return r

    api("PUT", "/secrets/api-token", json={"value": VALUE})
    api("POST", "/jobs", json={"name": "leaky", "command": [sys.executable, "-c", LEAKY],
                               "secrets": {"API_TOKEN": "api-token"}, "max_retries": 1})
    job = wait_job(cloud, "leaky", "failed")
    assert job["exit_code"] == 4 and "token is ***" in job["message"]
    api("PUT", "/secrets/api-token", json={"value": VALUE})
    api("POST", "/jobs", json={"name": "clash", "command": ["x"], "env": {"API_TOKEN": VALUE},
                               "secrets": {"API_TOKEN": "api-token"}})
    api("DELETE", "/secrets/nope")
    for path in ("/jobs", "/jobs/leaky", "/jobs/leaky/events", "/events", "/secrets",
                 "/secrets/api-token", "/usage", "/jobs/leaky/logs",
                 "/jobs/leaky/logs?attempt=1", "/openapi.json"):
        api("GET", path)
    reconcile_workloads(cloud, 2)
    with cloud.app.state.db.session() as s:
        from neocloud.server.db.tables import Event

        event_text = [f"{e.reason} {e.message}" for e in s.scalars(select(Event))]
    assert "***" in seen[-3]  # the log API masks it
    for text in seen + event_text + [caplog.text]:
        assert VALUE not in text
    # The raw log file is the job's own output; everything neocloud writes is clean.
    for db_file in tmp_path.glob("neocloud.db*"):  # the database (and its WAL)
        assert VALUE.encode() not in db_file.read_bytes(), db_file
    home = tmp_path / "home"
    for path in home.rglob("*"):
        if path.is_file() and "jobs" not in path.parts:
            assert VALUE.encode() not in path.read_bytes(), path
