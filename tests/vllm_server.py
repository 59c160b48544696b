"""One vLLM replica per test session, shared by the tests of the vLLM engine.

Starting vLLM on CPU takes minutes (its imports, the checkpoint conversion on a fresh
machine, compiling and warming up the model), so the tests that need a live one share it:
``vllm_cloud`` is a real local cloud (``neocloud up`` in a process, see
:mod:`tests.e2e.cloudproc`) with one deployment of engine ``vllm``, created and waited for
once. The end-to-end test reads the deployment's answers and the bill through it; the
replica test talks to its replica port (the launcher ``python -m
neocloud.serving.engines.vllm`` with vLLM behind it) through a gateway of its own. Tests of
the replica must leave the deployment as they found it (no PATCH, no delete); the fixture
deletes it at the end of the session and checks that the cloud stops cleanly.

The modules of the tests that use it form the pytest-xdist group ``vllm`` (``GROUPS`` in
``tests/conftest.py``): one worker runs them all (one vLLM at a time, one start).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from neocloud import Client
from neocloud.models import DeploymentOut

#: Seconds vLLM may take to start on CPU (it compiles and profiles; bounded).
READY_TIMEOUT_S = 1200
#: The dtype of the shared replica (and of the built-in engine compared with it): float32,
#: so the greedy text does not depend on whether this CPU computes bfloat16 natively.
VLLM_DTYPE = "float32"
#: The deployment's name (also the model name clients send).
NAME = "chat-vllm"


def engine_or_skip() -> str:
    """The engine environment's interpreter; skips the test when it is absent."""
    from neocloud.serving.engines.vllm import EngineNotInstalled, engine_python

    try:
        return engine_python()
    except EngineNotInstalled as exc:
        pytest.skip(f"vLLM engine environment absent (`make install-vllm`): {exc}")


@dataclass
class VllmCloud:
    """The shared cloud: ``url``, ``token``, ``sdk``, the deployment as ``POST`` answered
    it (``created``) and once ready (``ready``)."""

    url: str
    token: str
    sdk: Client
    created: DeploymentOut
    ready: DeploymentOut

    @property
    def name(self) -> str:
        return NAME

    @property
    def replica_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the ready replica (the launcher's port)."""
        (replica,) = [r for r in self.ready.replica_list if r.status.value == "ready"]
        assert replica.port, self.ready
        return f"http://127.0.0.1:{replica.port}"


@pytest.fixture(scope="session")
def vllm_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmCloud]:
    """See the module docstring; skipped without the engine environment."""
    from tests.e2e.cloudproc import CloudProcess

    engine_or_skip()
    cloud = CloudProcess(tmp_path_factory.mktemp("vllm-cloud") / "home").start()
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        created = sdk.deployments.create(NAME, engine="vllm", shape="cpu.small",
                                         env={"NEOCLOUD_DTYPE": VLLM_DTYPE})
        ready = sdk.deployments.wait_ready(NAME, timeout_s=READY_TIMEOUT_S)
        yield VllmCloud(url=cloud.url, token=cloud.token, sdk=sdk, created=created,
                        ready=ready)
        sdk.deployments.delete(NAME)
    finally:
        code = cloud.stop()
    assert code == 0, cloud.log()[-3000:]
