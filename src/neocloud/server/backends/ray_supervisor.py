"""The node side of the Ray backend: one supervisor actor per workload process.

The control plane creates a detached Ray actor of :class:`WorkloadSupervisor` on the node
the scheduler chose; the actor starts the workload as a child process in its own session
(process group) under :mod:`neocloud.logrun` (secret values masked), writes its output to
a private file on the node (mode ``0600``), and answers the control plane:
``poll`` (running or the exit code), ``read`` (log bytes from an offset), ``terminate``
(SIGTERM to the group, ``grace_s`` seconds, then SIGKILL) and ``describe`` (what a handle
needs, for adoption after a control-plane restart).

The whole process group dies with the actor. The child is started, from a thread that
lives exactly as long as it, with the Linux parent-death signal SIGKILL
(``prctl(PR_SET_PDEATHSIG)``, set in the child before ``exec``), and a watchdog,
:mod:`neocloud.procguard`, waits on the actor's process: when the actor's worker process
dies (``ray.kill``, SIGKILL, the raylet gone with its node) the watchdog kills the
child's whole group, the processes the child started included, which the child's own
death signal would leave running. ``terminate`` stops the group with grace.

This module imports Ray only inside the actor: the control plane wraps the class with
``ray.remote``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from neocloud.procguard import set_parent_death_signal
from neocloud.server.datafolder import make_private_dirs, open_private


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the child before ``exec``: SIGKILL when the starting thread (and actor) dies."""
    set_parent_death_signal(signal.SIGKILL)


def watchdog_command(*, parent: int, group: int, python: str = sys.executable) -> list[str]:
    """The :mod:`neocloud.procguard` command that kills process group ``group`` when
    process ``parent`` dies."""
    return [python, "-m", "neocloud.procguard", "--parent", str(parent),
            "--group", str(group)]


def _inherited(environ: dict[str, str]) -> dict[str, str]:
    """The node's environment minus neocloud's own settings (``NEOCLOUD_*``)."""
    return {k: v for k, v in environ.items() if not k.startswith("NEOCLOUD_")}


class WorkloadSupervisor:
    """Runs one workload process on this node and reports on it (a Ray actor).

    Args:
        workload_id: the workload (replica, job worker, pod) id.
        meta: what the control plane wants back from :meth:`describe` (its log mirror
            path and offset), kept as given.
    """

    def __init__(self, workload_id: str, meta: dict[str, Any]):
        self.workload_id = workload_id
        self.meta = dict(meta)
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._created = 0.0
        self._started = threading.Event()
        self._error: BaseException | None = None
        folder = Path(tempfile.gettempdir()) / f"neocloud-{os.getuid()}" / "workloads"
        make_private_dirs(folder)
        self.log_path = folder / f"{workload_id}.{os.getpid()}.log"

    def _run(self, command: list[str], env: dict[str, str], cwd: str | None) -> None:
        """Start the child and its group's watchdog, then wait for the child, on the
        thread its death signal is tied to (a parent-death signal fires when the thread
        that started the process ends)."""
        try:
            with open(open_private(self.log_path, os.O_WRONLY | os.O_APPEND), "ab") as log:
                self._proc = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=cwd, env=env, start_new_session=True, preexec_fn=_die_with_parent,
                )
                try:
                    self._watchdog = subprocess.Popen(
                        watchdog_command(parent=os.getpid(), group=self._proc.pid),
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                        env=_inherited(dict(os.environ)))
                except OSError as e:  # the workload runs; only its own death signal ties it
                    log.write(f"neocloud: no watchdog for the process group: {e}\n"
                              .encode())
            try:
                import psutil

                self._created = psutil.Process(self._proc.pid).create_time()
            except Exception:
                self._created = time.time()
        except BaseException as e:  # reported to the caller of launch()
            self._error = e
        finally:
            self._started.set()
        if self._watchdog is not None:
            self._watchdog.wait()  # at once: the watchdog leaves this process's tree
        if self._proc is not None:
            self._proc.wait()

    def launch(self, command: list[str], env: dict[str, str], cwd: str | None,
               control_python: str) -> dict[str, Any]:
        """Start the process: ``env`` over the node's environment; a command that starts
        with the control plane's interpreter (``control_python``) runs with this node's.

        Raises:
            OSError: the command or working folder does not exist on this node.
        """
        if self._proc is not None:
            return self.describe()
        if command and command[0] == control_python:
            command = [sys.executable, *command[1:]]
        # The log is written through the masking writer (names in NEOCLOUD_MASK_ENV).
        command = [sys.executable, "-m", "neocloud.logrun", "--", *command]
        if cwd and not os.path.isdir(cwd):
            raise FileNotFoundError(
                f"working folder {cwd} does not exist on this node (a cloud of many "
                "machines needs the data folder on a filesystem every node shares)")
        full_env = _inherited(dict(os.environ))
        full_env.update(env)
        threading.Thread(target=self._run, args=(command, full_env, cwd), daemon=True,
                         name=f"workload-{self.workload_id}").start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self.describe()

    def describe(self) -> dict[str, Any]:
        """``pid``, ``create_time`` (seconds since the epoch), ``supervisor_pid`` (this
        actor's process), the Ray node id, the node's log path and the ``meta`` given at
        creation."""
        import ray  # present: this runs inside a Ray actor

        pid = self._proc.pid if self._proc is not None else None
        return {"pid": pid, "create_time": self._created, "node_log": str(self.log_path),
                "supervisor_pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(), "meta": self.meta}

    def poll(self) -> dict[str, Any]:
        """``{"running": bool, "exit_code": int | None}`` (negative: killed by that signal)."""
        if self._proc is None:
            return {"running": False, "exit_code": None}
        code = self._proc.poll()
        return {"running": code is None, "exit_code": code}

    def read(self, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of the output from byte ``offset`` (b'' at the end)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def _signal(self, sig: int) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _group_alive(self) -> bool:
        """Whether any process of the child's group is left (the child itself included)."""
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def terminate(self, grace_s: float) -> int | None:
        """SIGTERM to the process group, up to ``grace_s`` seconds, then SIGKILL; the exit
        code of the child. Idempotent."""
        if self._proc is None:
            return None
        if self._proc.poll() is None or self._group_alive():
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and (self._proc.poll() is None
                                                   or self._group_alive()):
                time.sleep(0.05)
            if self._proc.poll() is None or self._group_alive():
                self._signal(signal.SIGKILL)
        try:
            return self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

    def discard(self) -> None:
        """Remove the node's log file (the control plane has its copy)."""
        self.log_path.unlink(missing_ok=True)
