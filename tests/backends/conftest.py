"""Fixtures of the backend conformance suite: one ``leg`` per backend (``local``, ``ray``).

The ``ray`` leg runs on a real Ray cluster on this machine, started once per test session:
a head (``127.0.0.2``) and two workers (``127.0.0.3``, ``127.0.0.4``) with two simulated
GPUs each, as separate ``ray start --block`` process trees from this interpreter's
environment (see :mod:`tests.backends.raycluster`). It is skipped when Ray is not installed
(``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from neocloud.server.backends.base import WORKLOAD_ENV, Backend, WorkloadSpec

HAVE_RAY = importlib.util.find_spec("ray") is not None
NO_RAY = "Ray is not installed (pip install -e '.[ray]')"


@dataclass
class Leg:
    """One backend under test, with what a test needs to drive it the same way on each."""

    name: str
    backend: Backend
    new_backend: Callable[[], Backend]
    """Another instance of the backend, as after a control-plane restart."""
    node: dict[str, Any] = field(default_factory=dict)
    """``node_name`` and ``node_address`` of the node the work goes to."""
    logs_dir: Path = Path()

    def spec(self, code: str, **kw: Any) -> WorkloadSpec:
        """A Python workload running ``code``, with a fresh id and a log."""
        wid = kw.pop("workload_id", None) or f"w{uuid.uuid4().hex[:12]}"
        kw.setdefault("log_path", self.logs_dir / f"{wid}.log")
        return WorkloadSpec(workload_id=wid, command=[sys.executable, "-c", code],
                            **{**self.node, **kw})


def processes_of(workload_id: str) -> list[psutil.Process]:
    """Every live process on this machine started for ``workload_id`` (children too: they
    inherit the environment), whichever node of the loopback cluster runs it."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and \
                    p.environ().get(WORKLOAD_ENV) == workload_id:
                found.append(p)
        except psutil.Error:
            continue
    return found


def wait_for(pred: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or pred}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A head and two 2-GPU workers on loopback; this process is a driver of it."""
    if not HAVE_RAY:
        pytest.skip(NO_RAY)
    from tests.backends.raycluster import TEST_RAY_ENV, LocalRayCluster

    os.environ.update(TEST_RAY_ENV)  # before Ray reads its configuration
    import ray

    from neocloud.server.backends.ray_backend import RayBackend

    root = Path(tempfile.mkdtemp(prefix="nrc", dir="/tmp"))  # short: socket path limits
    cluster = LocalRayCluster(root, workers=2, worker_gpus=2)
    try:
        cluster.start()
        RayBackend(cluster.address, node_ip="127.0.0.2").connect()
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()


@pytest.fixture(params=["local", pytest.param(
    "ray", marks=[pytest.mark.ray, pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)])])
def leg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Leg]:
    logs = tmp_path / "logs"
    if request.param == "local":
        from neocloud.server.backends.local import LocalBackend

        be = LocalBackend()
        yield Leg("local", be, LocalBackend, logs_dir=logs)
        be.close()
        return
    cluster = request.getfixturevalue("ray_cluster")
    from neocloud.server.backends.ray_backend import RayBackend

    made: list[RayBackend] = []

    def make() -> RayBackend:
        made.append(RayBackend(cluster.address, node_ip="127.0.0.2"))
        return made[-1]

    be = make()
    yield Leg("ray", be, make, node={"node_name": "worker1", "node_address": "127.0.0.3"},
              logs_dir=logs)
    for b in made:
        b.close()
