"""Deployments that follow their load, as a user runs them: ``neocloud up`` in a process,
real serving runtimes per replica, requests through the gateway.

- long streams (longer than the old 10 s kill) through a scale-in and a rolling update
  all finish: stopping replicas leave the route table first, then drain;
- an autoscaled deployment goes 0 -> N -> 0 under a load generator with no failed request.
"""

from __future__ import annotations

import concurrent.futures
import json
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from neocloud import Client
from neocloud.models import DeploymentOut
from neocloud.models.autoscaling import AutoscalingConfig
from tests.e2e.cloudproc import CloudProcess

SERVICE = textwrap.dedent('''
    import asyncio
    from neocloud.serving import Service, endpoint

    class Slow(Service):
        @endpoint
        async def ticks(self, count: int, delay_s: float):
            for i in range(count):
                await asyncio.sleep(delay_s)
                yield {"i": i}
            yield "[DONE]"

        @endpoint
        async def work(self, seconds: float) -> dict:
            await asyncio.sleep(seconds)
            return {"ok": True}
''')

TICKS = 15
"""A stream of 15 one-second events: longer than the 10 s after which the control plane
used to kill a stopping replica."""


@pytest.fixture
def service(tmp_path: Path) -> str:
    path = tmp_path / "slow_service.py"
    path.write_text(SERVICE)
    return f"{path}:Slow"


def _stream(url: str, token: str, name: str) -> list[str]:
    events: list[str] = []
    with httpx.Client(timeout=120) as http, http.stream(
            "POST", f"{url}/endpoints/{name}/ticks", json={"count": TICKS, "delay_s": 1.0},
            headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("data:"):
                events.append(line[5:].strip())
    return events


def _streams_through(cloud: CloudProcess, name: str, change: dict) -> list[list[str]]:
    """Start 4 long streams, apply ``change`` to the deployment 2 s in, return the streams."""
    token = cloud.token
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(_stream, cloud.url, token, name) for _ in range(4)]
        time.sleep(2.0)
        r = httpx.patch(f"{cloud.url}/api/v1/deployments/{name}", json=change,
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        return [f.result(timeout=180) for f in futs]


def _complete(events: list[str]) -> bool:
    return events == [json.dumps({"i": i}) for i in range(TICKS)] + ["[DONE]"] or (
        len(events) == TICKS + 1 and events[-1] == "[DONE]"
        and [json.loads(e)["i"] for e in events[:-1]] == list(range(TICKS)))


def _settled(sdk: Client, name: str, done: Callable[[DeploymentOut], bool],
             timeout_s: float = 30) -> DeploymentOut:
    """The deployment once ``done`` holds (drained replicas are written stopped when their
    process has exited); fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        dep = sdk.deployments.get(name)
        if done(dep) or time.monotonic() > deadline:
            assert done(dep), dep
            return dep
        time.sleep(0.3)


@pytest.mark.slow
def test_long_streams_finish_through_scale_in(tmp_path: Path, service: str) -> None:
    cloud = CloudProcess(tmp_path / "home").start()
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        sdk.deployments.create("s", service, replicas=2, drain_timeout_s=60)
        sdk.deployments.wait_ready("s", timeout_s=120)
        streams = _streams_through(cloud, "s", {"replicas": 1})
        assert all(_complete(ev) for ev in streams), streams
        # the drained replica exits once its streams are done, and is then stopped
        dep = _settled(sdk, "s", lambda d: [r.status.value for r in d.replica_list] == ["ready"])
        assert dep.replicas == 1
        stops = [e for e in sdk.deployments.events("s") if e.reason == "Stopped"]
        assert len(stops) == 1
    finally:
        cloud.stop()


@pytest.mark.slow
def test_long_streams_finish_through_a_rolling_update(tmp_path: Path, service: str) -> None:
    cloud = CloudProcess(tmp_path / "home").start()
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        sdk.deployments.create("s", service, replicas=2, drain_timeout_s=60)
        sdk.deployments.wait_ready("s", timeout_s=120)
        streams = _streams_through(cloud, "s", {"env": {"ROLL": "2"}})
        assert all(_complete(ev) for ev in streams), streams
        sdk.deployments.wait_ready("s", timeout_s=120)
        dep = _settled(sdk, "s", lambda d: {r.generation for r in d.replica_list} == {2})
        assert [r.status.value for r in dep.replica_list] == ["ready", "ready"]
    finally:
        cloud.stop()


@pytest.mark.slow
def test_autoscaled_deployment_goes_zero_to_n_to_zero_without_a_failed_request(
    tmp_path: Path, service: str
) -> None:
    cloud = CloudProcess(tmp_path / "home").start()
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        config = AutoscalingConfig(min_replicas=0, max_replicas=3, target=1, window_s=4,
                                   panic_window_s=1, scale_up_delay_s=0,
                                   scale_down_delay_s=3, scale_to_zero_delay_s=6)
        dep = sdk.deployments.create("auto", service, replicas=0, autoscaling=config,
                                     cold_start_timeout_s=90, drain_timeout_s=30)
        assert dep.status.value == "scaled_to_zero"
        h = {"Authorization": f"Bearer {cloud.token}"}
        statuses: list[int] = []
        most = [0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                most[0] = max(most[0], sdk.deployments.get("auto").ready_replicas)
                time.sleep(0.5)

        def client_loop(_: int) -> list[int]:
            got = []
            with httpx.Client(timeout=120) as http:
                end = time.monotonic() + 25
                while time.monotonic() < end:
                    r = http.post(f"{cloud.url}/endpoints/auto/work", json={"seconds": 1.0},
                                  headers=h)
                    got.append(r.status_code)
            return got

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for got in pool.map(client_loop, range(4)):
                statuses += got
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert most[0] >= 2  # it scaled out under the load
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            d = sdk.deployments.get("auto")
            if d.replicas == 0 and d.status.value == "scaled_to_zero":
                break
            time.sleep(0.5)
        stop.set()
        d = sdk.deployments.get("auto")
        assert d.replicas == 0 and d.status.value == "scaled_to_zero", d
        reasons = [e.reason for e in sdk.deployments.events("auto")]
        assert "ScalingFromZero" in reasons or "ScaleFromZero" in reasons
        assert "ScaleToZero" in reasons and "ColdStart" in reasons
    finally:
        cloud.stop()


@pytest.mark.slow
def test_a_stream_cut_by_the_drain_timeout_ends_with_an_error_event(
        tmp_path: Path, service: str) -> None:
    """A stream longer than the drain timeout, through a scale to zero: the client gets
    the events so far, then a final SSE error event, then a clean end (a bare reset would
    raise in the client)."""
    cloud = CloudProcess(tmp_path / "home").start()
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        sdk.deployments.create("s", service, replicas=1, drain_timeout_s=2)
        sdk.deployments.wait_ready("s", timeout_s=120)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(_stream, cloud.url, cloud.token, "s")
            time.sleep(2.0)
            r = httpx.patch(f"{cloud.url}/api/v1/deployments/s", json={"replicas": 0},
                            headers={"Authorization": f"Bearer {cloud.token}"}, timeout=30)
            assert r.status_code == 200, r.text
            events = fut.result(timeout=120)
        assert 0 < len(events) < TICKS + 1, events
        last = json.loads(events[-1])
        assert last["error"]["code"] == "drain_timeout" and "2 s" in last["error"]["message"]
        assert [json.loads(e)["i"] for e in events[:-1]] == list(range(len(events) - 1))
    finally:
        cloud.stop()
