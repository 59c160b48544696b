"""The local backend: start, inspect, logs, stop of real processes, and adoption."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil

from neocloud.server.backends import LocalBackend, WorkloadSpec
from neocloud.server.backends.base import start_or_adopt

SCRIPT = ("import os, sys, time, subprocess\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
          "print('started', os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
          "time.sleep(60)\n")


def _spec(tmp_path: Path, wid: str) -> WorkloadSpec:
    return WorkloadSpec(workload_id=wid, command=[sys.executable, "-c", SCRIPT],
                        gpu_indices=(1, 3), log_path=tmp_path / f"{wid}.log")


def _wait_log(be: LocalBackend, handle: dict, text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in be.logs(handle) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert text in be.logs(handle)


def test_start_logs_stop_kills_the_whole_group(tmp_path: Path) -> None:
    be = LocalBackend()
    handle = be.start(_spec(tmp_path, "w1"))
    _wait_log(be, handle, "started 1,3")
    assert be.inspect(handle).running
    children = psutil.Process(handle["pid"]).children(recursive=True)
    assert children
    state = be.stop(handle, grace_s=2)
    assert not state.running
    assert not be.inspect(handle).running
    for c in children:
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE


def test_a_recorded_pid_of_another_process_is_not_adopted(tmp_path: Path) -> None:
    be = LocalBackend()
    handle = be.start(_spec(tmp_path, "w2"))
    try:
        fake = {**handle, "create_time": handle["create_time"] - 1000}
        assert not be.inspect(fake).running  # pid reused by another process: not ours
    finally:
        be.stop(handle, grace_s=1)


def test_start_or_adopt_never_starts_a_workload_twice(tmp_path: Path) -> None:
    first = LocalBackend()
    handle = first.start(_spec(tmp_path, "w3"))
    try:
        _wait_log(first, handle, "started")
        # A new control plane (new backend object) lost the handle but finds the process.
        second = LocalBackend()
        again = start_or_adopt(second, _spec(tmp_path, "w3"))
        assert again["pid"] == handle["pid"]
        assert second.inspect(again).running
        assert second.find("nothing-like-this") is None
    finally:
        first.stop(handle, grace_s=1)
    assert LocalBackend().find("w3") is None


STUBBORN = ("import os, sys, time, subprocess\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(\"deaf\", flush=True); "
            "time.sleep(60)'])\n"
            "time.sleep(1.0)\n"
            "print('started', flush=True)\n"
            "time.sleep(60)\n")


def test_stop_waits_for_the_whole_group_not_only_its_leader(tmp_path: Path) -> None:
    """A child that ignores SIGTERM outlives its leader, which exits at once: stop still
    kills it (the wait and the SIGKILL are for the group; before, stop returned when the
    leader was gone and the child ran on)."""
    be = LocalBackend()
    handle = be.start(WorkloadSpec(workload_id="w-deaf", command=[sys.executable, "-c", STUBBORN],
                                   gpu_indices=(), log_path=tmp_path / "deaf.log"))
    _wait_log(be, handle, "started")
    assert "deaf" in be.logs(handle)
    children = psutil.Process(handle["pid"]).children(recursive=True)
    assert children
    be.stop(handle, grace_s=1)
    for c in children:
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE
