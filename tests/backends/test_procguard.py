"""A Ray supervisor's workload dies with it, the whole process group, not only the direct
child (the watchdog of :mod:`neocloud.procguard`), and the watchdog leaves with the group.
Runs without Ray: the supervisor class is driven directly, in a process of its own that
the test kills.

The failing input: after a raylet was killed, a job's command (a child of ``jobrun``,
itself the supervisor's child) was found still running; the parent-death signal had
reached only the direct child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from neocloud.server.backends.base import WORKLOAD_ENV
from neocloud.server.backends.ray_supervisor import WorkloadSupervisor
from tests.backends.conftest import processes_of, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the parent-death signal is Linux's")

#: A workload that starts a grandchild, so the tree is logrun -> command -> child.
TREE = textwrap.dedent("""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("tree up", flush=True)
    time.sleep(600)
""")

SUPERVISOR = textwrap.dedent("""
    import sys, time
    from neocloud.server.backends.ray_supervisor import WorkloadSupervisor

    class Bare(WorkloadSupervisor):
        def describe(self):  # outside Ray: no node id to ask for
            return {"pid": self._proc.pid}

    wid, code = sys.argv[1], sys.argv[2]
    env = {"NEOCLOUD_WORKLOAD_ID": wid, "NEOCLOUD_MASK_ENV": "API_TOKEN",
           "API_TOKEN": "tok-123456789"}
    info = Bare(wid, {}).launch([sys.executable, "-c", code], env, None, sys.executable)
    print(info["pid"], flush=True)
    time.sleep(600)
""")


class Bare(WorkloadSupervisor):
    def describe(self) -> dict[str, Any]:
        assert self._proc is not None
        return {"pid": self._proc.pid}


def _watchdogs(group: int) -> list[psutil.Process]:
    """The live watchdog processes of process group ``group``."""
    found = []
    for p in psutil.process_iter():
        try:
            cmd = p.cmdline()
            if "neocloud.procguard" in cmd and cmd[-2:] == ["--group", str(group)] \
                    and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _detached(dogs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``dogs`` whose parent is no longer this process (the supervisor here)."""
    found = []
    for p in dogs:
        try:
            if p.ppid() != os.getpid():
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_killing_the_supervisor_kills_the_whole_tree(tmp_path: Path) -> None:
    wid = f"w{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, wid, TREE], env=env,
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert sup.stdout is not None
        leader = int(sup.stdout.readline())
        procs = wait_for(lambda: len(processes_of(wid)) >= 3 and processes_of(wid),
                         what="logrun, command and grandchild")
        assert {os.getpgid(p.pid) for p in procs} == {leader}  # one group
        assert psutil.Process(leader).ppid() == sup.pid
        wait_for(lambda: _watchdogs(leader), what="the watchdog")
        sup.send_signal(signal.SIGKILL)  # the actor's process dies without a word
        sup.wait(10)
        wait_for(lambda: not processes_of(wid), timeout_s=15,
                 what="every process of the workload to die with its supervisor")
        wait_for(lambda: not _watchdogs(leader), timeout_s=10, what="the watchdog to go")
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait(10)
        for p in processes_of(wid):
            p.kill()
        if sup.stdout is not None:
            sup.stdout.close()


def test_the_watchdog_leaves_with_the_group_and_is_not_the_workload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    done = Bare("w-exit", {})
    done.launch([sys.executable, "-c", "raise SystemExit(3)"], {}, None, sys.executable)
    wait_for(lambda: not done.poll()["running"], what="the command to exit")
    assert done.poll() == {"running": False, "exit_code": 3}
    wait_for(lambda: not _watchdogs(done.describe()["pid"]), timeout_s=10,
             what="the watchdog to exit")

    wid = f"w{uuid.uuid4().hex[:12]}"
    tree = Bare(wid, {})
    tree.launch([sys.executable, "-c", TREE], {WORKLOAD_ENV: wid}, None, sys.executable)
    wait_for(lambda: b"tree up" in tree.read(0, 1 << 16), what="the tree to start")
    leader = tree.describe()["pid"]
    # The watchdog leaves the supervisor's tree by a second fork: until that fork is done the
    # one found is still the supervisor's child, so wait for the detached one.
    dogs = wait_for(lambda: _detached(_watchdogs(leader)), what="the detached watchdog")
    assert len(dogs) == 1 and dogs[0].pid not in {p.pid for p in processes_of(wid)}
    assert os.getpgid(dogs[0].pid) != leader  # not in the group it watches
    assert dogs[0].ppid() != os.getpid()  # out of the supervisor's tree
    assert tree.terminate(5.0) == -signal.SIGTERM  # stopped with grace, as before
    wait_for(lambda: not processes_of(wid), timeout_s=10, what="the group to be gone")
    wait_for(lambda: not _watchdogs(leader), timeout_s=10, what="the watchdog to exit")
