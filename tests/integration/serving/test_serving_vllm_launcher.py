"""The vLLM launcher keeps vLLM's processes inside the replica's life: vLLM runs in a
process group of its own, stopping the replica ends the whole group (also processes that
ignore SIGTERM), and a replica killed with SIGKILL takes vLLM with it (before, an
orphaned vLLM server was seen running on after its replica)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from neocloud.serving.engines.vllm import spawn, stop_group

#: Bound on waiting for the kernel to deliver a signal and the process to end (s).
END_WAIT_S = 30.0

# A stand-in engine: starts a grandchild that ignores SIGTERM, prints both pids, sleeps.
ENGINE = (
    "import subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)'],"
    " stdout=subprocess.PIPE)\n"
    "g.stdout.readline()\n"
    "print(g.pid, flush=True)\n"
    "time.sleep(600)\n"
)


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_ended(pid: int) -> bool:
    deadline = time.monotonic() + END_WAIT_S
    while time.monotonic() < deadline:
        if _ended(pid):
            return True
        time.sleep(0.05)
    return False


def test_vllm_runs_in_its_own_group_and_stop_ends_all_of_it() -> None:
    proc = spawn([sys.executable, "-c", ENGINE], {})
    try:
        assert proc.stdout is None  # output goes where the replica's goes
        pgid = os.getpgid(proc.pid)
        assert pgid == proc.pid and pgid != os.getpgid(0)
        assert os.getsid(proc.pid) == proc.pid
        deadline = time.monotonic() + END_WAIT_S
        grandchildren: list[psutil.Process] = []
        while not grandchildren and time.monotonic() < deadline:
            grandchildren = psutil.Process(proc.pid).children()
            time.sleep(0.05)
        assert grandchildren, "the stand-in engine did not start its worker"
        worker = grandchildren[0].pid
        assert os.getpgid(worker) == pgid
    finally:
        stop_group(proc, grace_s=2.0)
    assert proc.returncode == -signal.SIGTERM
    ended = _wait_ended(worker)
    if not ended:
        os.kill(worker, signal.SIGKILL)
    assert ended, "a worker that ignores SIGTERM outlived the replica"


def test_a_killed_replica_takes_vllm_with_it() -> None:
    replica = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from neocloud.serving.engines.vllm import spawn\n"
         "p = spawn([sys.executable, '-c', 'import time; time.sleep(600)'], {})\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert replica.stdout is not None
        engine = int(replica.stdout.readline())
        assert not _ended(engine)
        assert os.getpgid(engine) != os.getpgid(replica.pid)  # not reached by killpg
        replica.kill()  # SIGKILL: the replica's own clean-up never runs
        replica.wait(timeout=END_WAIT_S)
        ended = _wait_ended(engine)
        if not ended:
            os.kill(engine, signal.SIGKILL)
        assert ended, "vLLM outlived its killed replica"
    finally:
        if replica.poll() is None:
            replica.kill()
            replica.wait()
        if replica.stdout is not None:
            replica.stdout.close()
