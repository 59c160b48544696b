"""The ``fake`` backend: simulated processes on simulated nodes.

Used for tests and for clouds of thousands of simulated GPU nodes (capacity planning,
demos of placement). A fake workload is "running" from ``start`` until ``stop`` or until
a test calls :meth:`FakeBackend.crash`; it is ready at once.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from neocloud.server.backends.base import WorkloadSpec, WorkloadState


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._running: dict[int, WorkloadSpec] = {}
        self._exit: dict[int, int] = {}
        self._lock = threading.Lock()
        self.started: list[WorkloadSpec] = []

    def start(self, spec: WorkloadSpec) -> dict[str, Any]:
        with self._lock:
            fid = next(self._ids)
            self._running[fid] = spec
            self.started.append(spec)
        return {"fake_id": fid}

    def inspect(self, handle: dict[str, Any]) -> WorkloadState:
        fid = handle.get("fake_id")
        with self._lock:
            if fid in self._running:
                return WorkloadState(running=True)
            return WorkloadState(running=False, exit_code=self._exit.get(fid))

    def stop(self, handle: dict[str, Any], *, grace_s: float) -> WorkloadState:
        fid = handle.get("fake_id")
        with self._lock:
            if self._running.pop(fid, None) is not None:
                self._exit[fid] = 0
            return WorkloadState(running=False, exit_code=self._exit.get(fid))

    def crash(self, workload_id: str, exit_code: int = 1) -> None:
        """Make the fake process of ``workload_id`` exit with ``exit_code`` (tests)."""
        with self._lock:
            for fid, spec in list(self._running.items()):
                if spec.workload_id == workload_id:
                    del self._running[fid]
                    self._exit[fid] = exit_code

    def find(self, workload_id: str) -> dict[str, Any] | None:
        with self._lock:
            for fid, spec in self._running.items():
                if spec.workload_id == workload_id:
                    return {"fake_id": fid}
        return None

    def logs(
        self, handle: dict[str, Any], *, tail: int | None = None, this_run: bool = False
    ) -> str:
        return ""

    def probe_ready(self, handle: dict[str, Any], url: str, *, timeout_s: float) -> bool:
        return self.inspect(handle).running
