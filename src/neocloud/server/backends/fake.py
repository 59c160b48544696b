"""The ``fake`` backend: simulated processes on simulated nodes.

Used for tests and for clouds of thousands of simulated GPU nodes (capacity planning,
demos of placement). A fake workload is "running" from ``start`` until ``stop`` or until
a test calls :meth:`FakeBackend.crash`; it is ready at once. Its output is what a test
writes with :meth:`FakeBackend.write`, kept in memory and masked as the local backend masks
a log (the values of ``secret_env`` and sensitive-looking variables never stored).

The running processes are indexed by workload id, so finding one (each start goes
through ``find``: ``start_or_adopt``) costs the same with 50,000 processes as with one.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from neocloud.masking import Masker
from neocloud.server.backends.base import WorkloadSpec, WorkloadState, masked_env_names


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._running: dict[int, WorkloadSpec] = {}
        self._by_workload: dict[str, list[int]] = {}
        """Workload id -> fake ids of its running processes, oldest first."""
        self._exit: dict[int, int] = {}
        self._output: dict[int, str] = {}
        self._lock = threading.Lock()
        self.started: list[WorkloadSpec] = []

    def start(self, spec: WorkloadSpec) -> dict[str, Any]:
        with self._lock:
            fid = next(self._ids)
            self._running[fid] = spec
            self._by_workload.setdefault(spec.workload_id, []).append(fid)
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
            if self._end(fid) is not None:
                self._exit[fid] = 0
            return WorkloadState(running=False, exit_code=self._exit.get(fid))

    def _end(self, fid: Any) -> WorkloadSpec | None:
        """Take fake process ``fid`` off the running ones (under the lock); its spec, or
        ``None`` when it was not running."""
        spec = self._running.pop(fid, None)
        if spec is not None:
            fids = self._by_workload.get(spec.workload_id, [])
            if fid in fids:
                fids.remove(fid)
            if not fids:
                self._by_workload.pop(spec.workload_id, None)
        return spec

    def crash(self, workload_id: str, exit_code: int = 1) -> None:
        """Make the fake process of ``workload_id`` exit with ``exit_code`` (tests)."""
        with self._lock:
            for fid in list(self._by_workload.get(workload_id, [])):
                self._end(fid)
                self._exit[fid] = exit_code

    def vanish(self, workload_id: str) -> None:
        """Make the fake process of ``workload_id`` end with no exit code (as Ray reads a
        process whose raylet died; tests)."""
        with self._lock:
            for fid in list(self._by_workload.get(workload_id, [])):
                self._end(fid)

    def end_node(self, node_name: str, exit_code: int | None = None) -> int:
        """End every fake process on node ``node_name`` (a node lost, tests): with no exit
        code by default, as a backend reads processes whose node died. Returns how many
        ended. Subclasses end processes through this, :meth:`crash` or :meth:`vanish`,
        never by editing the running set: the index by workload id must stay equal to
        it."""
        with self._lock:
            fids = [fid for fid, spec in self._running.items() if spec.node_name == node_name]
            for fid in fids:
                self._end(fid)
                if exit_code is not None:
                    self._exit[fid] = exit_code
        return len(fids)

    def workload_ids(self) -> list[str]:
        """Ids of the workloads whose fake process runs now (for the invariant checker)."""
        with self._lock:
            return [spec.workload_id for spec in self._running.values()]

    def find(self, workload_id: str) -> dict[str, Any] | None:
        with self._lock:
            fids = self._by_workload.get(workload_id)
            return {"fake_id": fids[0]} if fids else None

    def write(self, workload_id: str, text: str, *, masked: bool = True) -> None:
        """Append ``text`` to the output of the running fake process of ``workload_id``
        (as if it printed it), masked as a real backend writes a log; ``masked=False``
        stores it as is (a log written before masking existed)."""
        with self._lock:
            fids = self._by_workload.get(workload_id)
            if fids:
                fid = fids[0]
                spec = self._running[fid]
                if masked:
                    values = [spec.env[k] for k in masked_env_names(spec)]
                    text = Masker(values).mask_text(text)
                self._output[fid] = self._output.get(fid, "") + text
                return
        raise KeyError(f"no running fake process for {workload_id!r}")

    def logs(
        self, handle: dict[str, Any], *, tail: int | None = None, this_run: bool = False
    ) -> str:
        with self._lock:
            text = self._output.get(handle.get("fake_id"), "")  # type: ignore[arg-type]
        if tail is None:
            return text
        lines = text.splitlines(keepends=True)
        return "".join(lines[-tail:]) if tail > 0 else ""

    def probe_ready(self, handle: dict[str, Any], url: str, *, timeout_s: float) -> bool:
        return self.inspect(handle).running
