"""The watchdog that ties a workload's whole process group to its supervisor's life:
``python -m neocloud.procguard --parent PID --group PGID``.

The Ray backend's supervisor (a Ray actor, see
:mod:`neocloud.server.backends.ray_supervisor`) starts a workload as the leader of a
process group of its own, with the Linux parent-death signal (``prctl(PR_SET_PDEATHSIG)``,
:func:`set_parent_death_signal`) so that it dies with the supervisor. That signal reaches
one process, the direct child: what the child started (``logrun`` and ``jobrun``
children, server workers) would be left running with no one to stop it. So the
supervisor also starts this watchdog, which kills the whole group with SIGKILL when the
supervisor dies (killed, or gone with its node's raylet).

The watchdog holds a ``pidfd`` of the supervisor (``pidfd_open(2)``, opened while the
supervisor is its parent, so it names that process and no later one with the same pid)
and waits on it. It then leaves the supervisor's tree (a second fork and a session of its
own): Ray kills a dead worker's direct children and process group at once
(``kill_child_processes_on_worker_exit``), which would kill a watchdog in them before it
could act. It is not in the workload's group either (signals that stop the workload do
not reach it) nor in its environment (it is not one of the workload's processes), and it
exits by itself once the group is gone, checking every :data:`POLL_S` seconds. Only the
standard library is imported: one small interpreter per workload.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import sys

#: ``prctl(2)`` option: the signal this process gets when its parent (thread) dies.
PR_SET_PDEATHSIG = 1

#: Seconds between two checks that the group still has a process.
POLL_S = 0.5


def set_parent_death_signal(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` for the calling process (kept across ``exec``);
    returns whether it took effect (``False`` off Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a process."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_group(pgid: int) -> None:
    """SIGKILL to every process of group ``pgid`` (none left: nothing to do)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, ``/proc``), or
    ``None`` when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def watch(parent: int, pgid: int, *, detach: bool = True) -> int:
    """Kill group ``pgid`` when process ``parent`` (this one's parent when called) dies;
    return once the group is gone (``detach``: first leave ``parent``'s tree)."""
    try:
        pidfd: int | None = os.pidfd_open(parent)
    except ProcessLookupError:
        kill_group(pgid)
        return 0
    except (OSError, AttributeError):  # no pidfd (an old kernel): watch its start time
        pidfd = None
    ticks = _start_ticks(parent)
    if os.getppid() != parent or ticks is None:  # it died before it could be watched
        kill_group(pgid)
        return 0
    if detach:
        if os.fork() > 0:
            os._exit(0)
        os.setsid()
    poller = select.poll()
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    while group_alive(pgid):
        if pidfd is not None:
            died = bool(poller.poll(int(POLL_S * 1000)))
        else:
            select.select([], [], [], POLL_S)
            died = _start_ticks(parent) != ticks
        if died:
            kill_group(pgid)
            return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neocloud.procguard")
    parser.add_argument("--parent", type=int, required=True,
                        help="pid of the parent whose death kills the group")
    parser.add_argument("--group", type=int, required=True,
                        help="the process group to kill (its leader's pid)")
    args = parser.parse_args(argv)
    return watch(args.parent, args.group)


if __name__ == "__main__":  # pragma: no cover - exercised as a process by the tests
    sys.exit(main())
