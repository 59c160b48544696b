"""The one small interface every backend implements.

A backend starts, inspects, stops and reads the logs of one workload process (a replica,
a job worker, a pod) on a node, with given GPUs, environment and files. What it needs to
find the process again after a control-plane restart goes into a JSON-able ``handle``
that the caller stores in the database *before* it acts on anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from neocloud.masking import looks_sensitive

T = TypeVar("T")


@dataclass(frozen=True)
class WorkloadSpec:
    """One process to run.

    ``gpu_indices`` become ``CUDA_VISIBLE_DEVICES`` and their count ``NEOCLOUD_GPU_COUNT``
    (a fractional share is one device); ``gpu_milli`` is the share of each of them, in
    thousandths (1000: whole GPUs), for backends that account GPUs themselves (Ray);
    ``log_path`` receives stdout and stderr; ``port`` (if any) is where the process listens
    for HTTP (readiness probes). ``node_name`` is the node the scheduler chose: backends that
    run many nodes (Ray) place the process there (by ``node_address`` when it is ``None``).

    ``secret_env`` names the entries of ``env`` whose values are secrets (those injected
    from workspace secrets). A backend never writes the value of one of them, nor of an
    ``env`` entry whose name :func:`~neocloud.masking.looks_sensitive`, to a log: they are
    masked (with their base64 and URL-encoded forms) as the lines are written (see
    :func:`masked_env_names` and :mod:`neocloud.logrun`).
    """

    workload_id: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    gpu_indices: tuple[int, ...] = ()
    log_path: Path | None = None
    port: int | None = None
    node_address: str = "127.0.0.1"
    node_name: str | None = None
    gpu_milli: int = 1000
    secret_env: frozenset[str] = frozenset()


@dataclass(frozen=True)
class WorkloadState:
    """``running`` or not; ``exit_code`` when the backend knows it (``None`` otherwise)."""

    running: bool
    exit_code: int | None = None


class Backend(Protocol):
    name: str

    def start(self, spec: WorkloadSpec) -> dict[str, Any]:
        """Start the process; returns its handle. Raises ``OSError`` when it cannot start."""
        ...

    def inspect(self, handle: dict[str, Any]) -> WorkloadState:
        """Whether the process of ``handle`` still runs (the same process, not a reused pid)."""
        ...

    def stop(self, handle: dict[str, Any], *, grace_s: float) -> WorkloadState:
        """SIGTERM, wait up to ``grace_s`` seconds, then SIGKILL. Idempotent."""
        ...

    def logs(
        self, handle: dict[str, Any], *, tail: int | None = None, this_run: bool = False
    ) -> str:
        """The output (stdout and stderr, interleaved as written) of the process of
        ``handle``.

        Shape: text decoded as UTF-8 (undecodable bytes become U+FFFD), lines as the process
        wrote them (the last one may be unfinished). Secret values were masked when the
        lines were written (see :class:`WorkloadSpec`): this returns what the backend
        stored, never a value in clear.

        Args:
            handle: what :meth:`start` or :meth:`find` returned; it stays valid after the
                process exited, so a finished workload's output can still be read.
            tail: only the last ``tail`` lines (``0``: none; ``None``: all). A backend may
                read only the end of a long log to find them (``local``: the last 4 MiB).
            this_run: only what this start of the process wrote (a log may also hold the
                output of earlier starts of the same workload).

        Follow: there is no streaming mode. Output is only ever appended, so a caller
        follows a log by calling again and keeping what is new (the API serves windows of
        the last lines; ``neocloud logs -f`` polls them, see :mod:`neocloud.cli.follow`).

        Returns ``""`` when the process wrote nothing, its log is gone, or ``handle`` is
        empty (never started). Raises ``OSError`` when the log exists but cannot be read.
        """
        ...

    def probe_ready(self, handle: dict[str, Any], url: str, *, timeout_s: float) -> bool:
        """Whether the workload answers ready at ``url`` (HTTP 200)."""
        ...

    def find(self, workload_id: str) -> dict[str, Any] | None:
        """The handle of a running process started for ``workload_id``, if there is one."""
        ...


#: Environment variable carrying the workload id into every process a backend starts.
WORKLOAD_ENV = "NEOCLOUD_WORKLOAD_ID"


def masked_env_names(spec: WorkloadSpec) -> list[str]:
    """The names of ``spec.env`` entries whose values a backend masks in the logs it
    writes: the ``secret_env`` ones and those whose name looks sensitive, sorted."""
    return sorted(k for k in spec.env if k in spec.secret_env or looks_sensitive(k))


#: Environment variable carrying the number of devices in ``CUDA_VISIBLE_DEVICES``.
GPU_COUNT_ENV = "NEOCLOUD_GPU_COUNT"


def gpu_env(gpu_indices: tuple[int, ...]) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` (the allocation) and ``NEOCLOUD_GPU_COUNT`` (its length; a
    fractional share of one GPU counts as one device), the same on every backend."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpu_indices),
            GPU_COUNT_ENV: str(len(gpu_indices))}


def start_or_adopt(backend: Backend, spec: WorkloadSpec) -> dict[str, Any]:
    """Start ``spec``'s process unless one for the same workload already runs.

    Closes the one window where a process could be started twice: the control plane
    wrote the workload as starting, started the process, and died before it recorded the
    handle. The next start finds that process by its workload id and adopts it.
    """
    found = backend.find(spec.workload_id)
    return found if found is not None else backend.start(spec)


def handle_log(handle: dict[str, Any], *, tail: int | None, this_run: bool) -> str:
    """The log file a handle names (``log_path``), as :meth:`Backend.logs` returns it:
    the last ``tail`` lines (all when ``None``), of this run only (from the handle's
    ``log_offset``, bytes) when ``this_run``; '' when the handle names no log."""
    path = handle.get("log_path")
    if not path:
        return ""
    start = int(handle.get("log_offset", 0)) if this_run else 0
    return tail_file(Path(path), tail, start=start)


def tail_file(path: Path, lines: int | None, *, start: int = 0) -> str:
    """The last ``lines`` lines of a text file from byte ``start`` on ('' if it does not
    exist).

    Reads at most the last 4 MiB when ``lines`` is given, so a huge log costs little.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            if lines is None:
                f.seek(min(start, size))
            else:
                f.seek(max(start, size - 4 * 1024 * 1024, 0) if start <= size else size)
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if lines is None:
        return text
    parts = text.splitlines(keepends=True)
    return "".join(parts[-lines:]) if lines > 0 else ""


def backend_for(
    backends: dict[str, Backend], node: T | None, kind_of: Callable[[T], str]
) -> tuple[Backend, T] | None:
    """The backend that runs ``node``'s work, with the node; ``None`` when the node or its
    backend is gone."""
    if node is None:
        return None
    be = backends.get(kind_of(node))
    return (be, node) if be is not None else None
