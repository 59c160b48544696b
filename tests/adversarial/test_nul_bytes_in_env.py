"""A NUL byte in an env value (or a command argument) is accepted by the API; starting the
process then raises ``ValueError: embedded null byte`` inside the reconciler, which only
catches ``OSError``: the job stays ``starting`` forever and the traceback repeats every
pass. Expected: 422 naming the field at the API (or the job failing with a message)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import Cloud
from tests.server.workload_helpers import drive_until, get, open_local_cloud


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from open_local_cloud(tmp_path)


@pytest.mark.parametrize("spec", [
    {"command": ["true"], "env": {"X": "a\x00b"}},
    {"command": ["echo", "a\x00b"]},
])
def test_nul_byte_is_refused_or_fails_the_job(local_cloud: Cloud, spec: dict) -> None:
    r = local_cloud.api("POST", "/jobs", json={"name": "nul", **spec})
    if r.status_code in (400, 422):
        assert r.json()["error"]["param"].split(".")[0] in ("env", "command")
        return
    assert r.status_code == 201, r.text
    def finished() -> dict | None:
        job = get(local_cloud, "/jobs/nul")
        return job if job["status"] in ("failed", "succeeded") else None

    job = drive_until(local_cloud, finished, timeout_s=8, what="the job to finish")
    assert job["status"] == "failed"


def test_nul_byte_in_deployment_env_is_refused(local_cloud: Cloud) -> None:
    r = local_cloud.api("POST", "/deployments", json={
        "name": "nul", "service": "embeddings", "env": {"X": "a\x00b"}})
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["param"].startswith("env")
