"""What only the Ray backend does: placement on the node the scheduler chose, GPUs
accounted by Ray, adoption by a new control-plane process, and logs kept when the node is
gone. On the real loopback cluster of :func:`tests.backends.conftest.ray_cluster`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from neocloud.server.backends.base import WorkloadSpec, start_or_adopt
from tests.backends.conftest import HAVE_RAY, NO_RAY, processes_of, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)]

SLEEPER = "import time; print('started', flush=True); time.sleep(600)"
WORKERS = {"worker1": "127.0.0.3", "worker2": "127.0.0.4"}


@pytest.fixture
def ray_backend(ray_cluster: Any) -> Any:
    from neocloud.server.backends.ray_backend import RayBackend

    be = RayBackend(ray_cluster.address, node_ip="127.0.0.2", start_timeout_s=20)
    yield be
    be.close()


def _spec(tmp_path: Path, node: str, code: str = SLEEPER, **kw: Any) -> WorkloadSpec:
    import uuid

    wid = kw.pop("workload_id", None) or f"w{uuid.uuid4().hex[:12]}"
    kw.setdefault("node_name", node)
    kw.setdefault("node_address", WORKERS.get(node, "127.0.0.9"))
    return WorkloadSpec(workload_id=wid, command=[sys.executable, "-c", code],
                        log_path=tmp_path / f"{wid}.log", **kw)


def _raylet_ip(pid: int) -> str:
    """The ``--node_ip_address`` of the raylet above process ``pid``."""
    for parent in psutil.Process(pid).parents():
        cmd = parent.cmdline()
        if cmd and cmd[0].endswith("raylet"):
            for arg in cmd:
                if arg.startswith("--node_ip_address="):
                    return arg.split("=", 1)[1]
    raise AssertionError(f"process {pid} does not run under a raylet")


def test_runs_on_the_chosen_node_and_gpu_numbers_are_per_node(
        ray_backend: Any, tmp_path: Path) -> None:
    import ray

    # Both nodes number their GPUs from 0: the same index on each is two processes.
    handles = {n: ray_backend.start(_spec(tmp_path, n, gpu_indices=(0,))) for n in WORKERS}
    try:
        ids = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
        for node, h in handles.items():
            assert h["node_id"] == ids[WORKERS[node]]
            assert _raylet_ip(h["pid"]) == WORKERS[node]
            assert ray_backend.inspect(h).running
        assert handles["worker1"]["node_id"] != handles["worker2"]["node_id"]
    finally:
        for h in handles.values():
            ray_backend.stop(h, grace_s=2)


def test_by_address_when_no_name(ray_backend: Any, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "worker2", node_name=None)
    h = ray_backend.start(spec)
    try:
        assert _raylet_ip(h["pid"]) == "127.0.0.4"
    finally:
        ray_backend.stop(h, grace_s=2)


def test_ray_accounts_the_gpus(ray_backend: Any, tmp_path: Path) -> None:
    whole = ray_backend.start(_spec(tmp_path, "worker2", gpu_indices=(0, 1)))
    try:
        # worker2 has 2 GPUs in Ray; both are taken, so one more cannot be placed there.
        with pytest.raises(OSError, match="did not start"):
            ray_backend.start(_spec(tmp_path, "worker2", gpu_indices=(0,)))
    finally:
        ray_backend.stop(whole, grace_s=2)
    # Two half shares of one GPU fit beside a whole GPU.
    hs = [ray_backend.start(_spec(tmp_path, "worker2", gpu_indices=(i,), gpu_milli=m))
          for i, m in ((0, 500), (0, 500), (1, 1000))]
    try:
        assert all(ray_backend.inspect(h).running for h in hs)
    finally:
        for h in hs:
            ray_backend.stop(h, grace_s=2)


ADOPT = """
import json, sys
from pathlib import Path
from neocloud.server.backends.base import WorkloadSpec
from neocloud.server.backends.ray_backend import RayBackend
be = RayBackend(sys.argv[1], node_ip="127.0.0.2")
spec = WorkloadSpec(workload_id=sys.argv[2], command=[sys.executable, "-c", sys.argv[3]],
                    log_path=Path(sys.argv[4]), node_name="worker1", node_address="127.0.0.3")
print(json.dumps(be.start(spec)), flush=True)
"""


def test_a_new_control_plane_process_adopts(ray_cluster: Any, ray_backend: Any,
                                            tmp_path: Path) -> None:
    """A control plane starts a workload and dies before recording its handle; the next
    one finds the process (detached supervisor) and never starts it again."""
    spec = _spec(tmp_path, "worker1")
    out = subprocess.run([sys.executable, "-c", ADOPT, ray_cluster.address,
                          spec.workload_id, SLEEPER, str(spec.log_path)],
                         capture_output=True, text=True, timeout=120, check=True)
    first = json.loads(out.stdout.strip().splitlines()[-1])
    try:
        assert psutil.pid_exists(first["pid"])  # outlived the process that started it
        adopted = start_or_adopt(ray_backend, spec)
        assert adopted["pid"] == first["pid"] and adopted["actor"] == first["actor"]
        assert len(processes_of(spec.workload_id)) == 1
        assert "started" in wait_for(lambda: ray_backend.logs(adopted), what="logs")
    finally:
        ray_backend.stop(first, grace_s=2)
    assert processes_of(spec.workload_id) == []


def test_logs_kept_and_process_gone_when_the_node_is_lost(
        ray_cluster: Any, ray_backend: Any, tmp_path: Path) -> None:
    node = ray_cluster.add_node("worker9")
    spec = _spec(tmp_path, "worker9", "import time\nfor i in range(5): print('tick', i)\n"
                 "import sys; sys.stdout.flush(); time.sleep(600)", node_address=node.ip)
    h = ray_backend.start(spec)
    pid = h["pid"]
    wait_for(lambda: "tick 4" in ray_backend.logs(h), what="output")
    wait_for(lambda: "tick 4" in spec.log_path.read_text(), timeout_s=10,
             what="the copy on the control plane")
    raylet = next(p for p in psutil.Process(node.proc.pid).children(recursive=True)
                  if p.name() == "raylet")
    t0 = time.monotonic()
    raylet.kill()  # the node is lost: its raylet dies without a word
    wait_for(lambda: not ray_backend.inspect(h).running, timeout_s=60,
             what="the workload to read as ended")
    lost_s = time.monotonic() - t0
    assert ray_backend.inspect(h).exit_code is None  # unknown: its node is gone
    wait_for(lambda: not psutil.pid_exists(pid), timeout_s=20, what="the process to die")
    ray_cluster.stop_node(node)  # the rest of its process tree
    assert "tick 0" in ray_backend.logs(h) and "tick 4" in ray_backend.logs(h)
    assert not ray_backend.stop(h, grace_s=1).running
    print(f"raylet killed; its workload read as ended after {lost_s:.1f} s")


def test_cannot_start_where_there_is_no_node_or_folder(ray_backend: Any,
                                                       tmp_path: Path) -> None:
    with pytest.raises(OSError, match="no alive Ray node"):
        ray_backend.start(_spec(tmp_path, "no-such-node"))
    missing = tmp_path / "not-shared"
    with pytest.raises(OSError, match="shares"):
        ray_backend.start(_spec(tmp_path, "worker1", cwd=missing))


def test_alive_node_ids_and_a_port_free_on_the_chosen_node(ray_backend: Any) -> None:
    """What the node-health reconciler and gangs across nodes ask of Ray: which nodes
    are alive (by the ids ``node join`` records) and a port free on one node's address."""
    import socket

    import ray

    alive = ray_backend.alive_node_ids()
    ids = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert {ids["127.0.0.3"], ids["127.0.0.4"]} <= alive
    port = ray_backend.free_port(node_name="worker2", address="127.0.0.4")
    assert 0 < port < 65536
    with socket.socket() as s:  # free there (nothing listens on it)
        s.bind(("127.0.0.4", port))
    with pytest.raises(OSError, match="no alive Ray node"):
        ray_backend.free_port(node_name="nowhere", address="127.0.0.99")


TREE = ("import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('tree up', flush=True)\ntime.sleep(600)\n")


def test_killing_the_supervisor_kills_the_workloads_whole_tree(
        ray_backend: Any, tmp_path: Path) -> None:
    """The failing input: after a raylet kill, a workload's grandchild was left running.
    The supervisor (the actor's process) is killed by PID; every process of the
    workload, the command's own child included, must go with it."""
    spec = _spec(tmp_path, "worker1", TREE, env={"API_TOKEN": "tok-123456789"})
    h = ray_backend.start(spec)
    try:
        procs = wait_for(lambda: len(processes_of(spec.workload_id)) >= 3
                         and processes_of(spec.workload_id),
                         what="logrun, command and grandchild")
        supervisor = psutil.Process(h["supervisor_pid"])
        assert psutil.Process(h["pid"]).ppid() == supervisor.pid
        assert {p.pid for p in procs} <= {p.pid for p in supervisor.children(recursive=True)}
        supervisor.kill()
        wait_for(lambda: not processes_of(spec.workload_id), timeout_s=20,
                 what="the workload's processes to die with their supervisor")
        assert not ray_backend.inspect(h).running
    finally:
        ray_backend.stop(h, grace_s=2)
