"""The ``local`` backend: one OS process per workload on this machine.

Each process runs in its own session (process group), so stopping it also stops whatever it
spawned (uvicorn workers, torchrun children). A process with a log runs under
:mod:`neocloud.logrun`, which writes its output to the log (mode ``0600``) with the values
of its secret and sensitive-looking environment variables masked; with nothing to mask
``logrun`` replaces itself with the command, so the process tree is the same as without it.

Its handle records the pid and the process start time: after a control-plane restart,
:meth:`LocalBackend.inspect` finds the same process again (a reused pid has another start
time), so running replicas are adopted instead of started twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from neocloud.logrun import MASK_ENV
from neocloud.procguard import group_alive
from neocloud.server.backends.base import (
    WORKLOAD_ENV,
    WorkloadSpec,
    WorkloadState,
    gpu_env,
    handle_log,
    masked_env_names,
)
from neocloud.server.datafolder import make_private_dirs, open_private


def _inherited(environ: dict[str, str]) -> dict[str, str]:
    """The control plane's environment minus its own settings (``NEOCLOUD_*``: data folder,
    database URL, tokens, keys), which a workload must never see."""
    return {k: v for k, v in environ.items() if not k.startswith("NEOCLOUD_")}


class LocalBackend:
    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=2.0)

    def start(self, spec: WorkloadSpec) -> dict[str, Any]:
        env = _inherited(dict(os.environ))
        env.update(spec.env)
        env.update(gpu_env(spec.gpu_indices))
        env[WORKLOAD_ENV] = spec.workload_id
        env.setdefault("PYTHONUNBUFFERED", "1")
        command = list(spec.command)
        if spec.log_path is not None:
            # The log is written through the masking writer: no secret value reaches it.
            env[MASK_ENV] = ",".join(masked_env_names(spec))
            command = [sys.executable, "-m", "neocloud.logrun", "--", *command]
            log_path = spec.log_path
            make_private_dirs(log_path.parent)
            fd = open_private(log_path, os.O_WRONLY | os.O_APPEND)
        else:
            log_path = Path(os.devnull)
            fd = os.open(os.devnull, os.O_WRONLY)
        with open(fd, "ab") as log:
            offset = log.seek(0, os.SEEK_END)
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(spec.cwd) if spec.cwd else None,
                env=env,
                start_new_session=True,
            )
        with self._lock:
            self._children[proc.pid] = proc
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = 0.0
        return {"pid": proc.pid, "create_time": created, "log_path": str(log_path),
                "log_offset": offset}

    def _process(self, handle: dict[str, Any]) -> psutil.Process | None:
        pid = handle.get("pid")
        if not pid:
            return None
        with self._lock:
            child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            return None
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - float(handle.get("create_time", 0))) > 0.5:
                return None
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except psutil.Error:
            return None

    def inspect(self, handle: dict[str, Any]) -> WorkloadState:
        if self._process(handle) is not None:
            return WorkloadState(running=True)
        pid = handle.get("pid")
        with self._lock:
            child = self._children.get(pid) if pid else None
        code = child.poll() if child is not None else None
        return WorkloadState(running=False, exit_code=code)

    def stop(self, handle: dict[str, Any], *, grace_s: float) -> WorkloadState:
        """SIGTERM to the workload's whole process group, up to ``grace_s`` seconds for
        every process of it to exit, then SIGKILL to what is left of the group (and up
        to 5 s for it to go).

        Invariant: when this returns, no process of the group is left, the leader's
        children included: the wait is for the group, not for its leader (a child that
        outlives the leader, or ignores SIGTERM, is still killed). The group's id is the
        leader's pid (every workload starts in a session of its own), taken while the
        leader is known to be this workload's process; the number stays the group's
        while the group has a process, so signalling it later reaches no other one.
        """
        p = self._process(handle)
        if p is not None:
            pgid = self._group_of(p.pid)
            self._signal_group(p.pid, pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self._group_running(handle, pgid):
                time.sleep(0.05)
            if self._group_running(handle, pgid):
                self._signal_group(p.pid, pgid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and self._group_running(handle, pgid):
                    time.sleep(0.05)
        pid = handle.get("pid")
        with self._lock:
            child = self._children.pop(pid, None) if pid else None
        code = None
        if child is not None:
            try:
                code = child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
        return WorkloadState(running=False, exit_code=code)

    @staticmethod
    def _group_of(pid: int) -> int | None:
        try:
            return os.getpgid(pid)
        except ProcessLookupError:
            return None

    def _group_running(self, handle: dict[str, Any], pgid: int | None) -> bool:
        """Whether the leader (reaped here once it exited, when it is this process's
        child) or any other process of group ``pgid`` still runs."""
        if self._process(handle) is not None:
            return True
        return pgid is not None and group_alive(pgid)

    @staticmethod
    def _signal_group(pid: int, pgid: int | None, sig: int) -> None:
        """``sig`` to group ``pgid``; to the leader ``pid`` alone when there is no group
        (or it cannot be signalled)."""
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
                return
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def find(self, workload_id: str) -> dict[str, Any] | None:
        """The running process started for ``workload_id`` (found by its environment; the
        topmost one when it has children), as a handle; ``None`` if there is none."""
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid", "ppid"]):
            try:
                if p.environ().get(WORKLOAD_ENV) == workload_id and \
                        p.status() != psutil.STATUS_ZOMBIE:
                    found[p.pid] = p
            except psutil.Error:
                continue
        tops = [p for p in found.values() if p.info["ppid"] not in found]
        if not tops:
            return None
        top = tops[0]
        try:
            created = top.create_time()
        except psutil.Error:
            return None
        log_path = ""
        try:
            for f in top.open_files():
                if f.path.endswith(".log"):
                    log_path = f.path
                    break
        except psutil.Error:
            pass
        return {"pid": top.pid, "create_time": created, "log_path": log_path, "adopted": True}

    def logs(
        self, handle: dict[str, Any], *, tail: int | None = None, this_run: bool = False
    ) -> str:
        return handle_log(handle, tail=tail, this_run=this_run)

    def probe_ready(self, handle: dict[str, Any], url: str, *, timeout_s: float) -> bool:
        try:
            return self._http.get(url, timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()
