"""Helpers for the job, pod, secret and volume tests: drive the reconcilers by hand."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.server.helpers import Cloud, open_cloud


def reconcile_workloads(cloud: Cloud, times: int = 1) -> None:
    """Run the job and pod reconcilers ``times`` times (the deployment one too)."""
    for _ in range(times):
        cloud.app.state.reconcilers.run_once()


def drive_until(cloud: Cloud, check: Callable[[], Any], *, timeout_s: float = 60,
                what: str = "condition") -> Any:
    """Reconcile until ``check()`` returns something true (bounded by ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reconcile_workloads(cloud)
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def get(cloud: Cloud, path: str, token: str | None = None) -> dict[str, Any]:
    r = cloud.api("GET", path, token)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_job(cloud: Cloud, name: str, *statuses: str, timeout_s: float = 60) -> dict[str, Any]:
    """Reconcile until the job's status is one of ``statuses``; returns the job."""
    def check() -> dict[str, Any] | None:
        job = get(cloud, f"/jobs/{name}")
        return job if job["status"] in statuses else None

    result: dict[str, Any] = drive_until(cloud, check, timeout_s=timeout_s,
                                         what=f"job {name} to be {'/'.join(statuses)}")
    return result


def wait_pod(cloud: Cloud, name: str, *statuses: str, timeout_s: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod = get(cloud, f"/pods/{name}")
        return pod if pod["status"] in statuses else None

    result: dict[str, Any] = drive_until(cloud, check, timeout_s=timeout_s,
                                         what=f"pod {name} to be {'/'.join(statuses)}")
    return result


def error_of(response: Any) -> dict[str, Any]:
    """The OpenAI error object of a failed response (asserting its shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    err: dict[str, Any] = body["error"]
    return err


def open_local_cloud(tmp_path: Path, **kw: Any) -> Iterator[Cloud]:
    """A cloud in-process with this machine as its ``local`` node (SQLite)."""
    c, client = open_cloud(tmp_path / "home", f"sqlite:///{tmp_path / 'neocloud.db'}",
                           local=True, job_stop_grace_s=5.0, **kw)
    try:
        yield c
    finally:
        client.__exit__(None, None, None)
