"""The control plane under test: the real app (API, gateway, reconcilers) on the fake
backend, served over HTTP on a loopback port by uvicorn, one process.

Started by ``run.py``. Each reconciler step of the reconciler thread is timed; every pass
of a step appends one JSON line ``{"kind": ..., "start": ..., "s": ...}`` (seconds, wall
clock) to ``--timings``. On SQLite, for each write transaction, the wait for the write
lock and its hold are appended there too (:func:`time_write_lock`). With ``--profile
FILE`` the reconciler thread runs under cProfile and the stats are written to FILE when
the process ends (SIGTERM).

Usage: python benchmarks/fleet/server.py --database-url URL --home DIR --port N
       --timings FILE [--profile FILE] [--interval-s S] [--sqlite-writer-queue]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import uvicorn
from sqlalchemy import Engine, event

from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.settings import Settings

#: Name of each step of the reconciler thread, by the qualified name of its function.
STEP_KINDS = {
    "NodeReconciler.run_once": "nodes",
    "DeploymentReconciler.run_once": "deployments",
    "JobReconciler.run_once": "jobs",
    "PodReconciler.run_once": "pods",
    "UsageBuffer.flush": "usage",
    "MeteringLoop.run_once": "metering",
}


class StepTimer:
    """Wraps the reconciler thread's steps: times each call and appends it to ``out``;
    with ``profile``, each call runs under that profiler (it profiles this thread only)."""

    def __init__(self, out: IO[str], profile: cProfile.Profile | None):
        self.out = out
        self.profile = profile
        self.lock = threading.Lock()

    def wrap(self, step: Callable[[], None]) -> Callable[[], None]:
        kind = STEP_KINDS.get(getattr(step, "__qualname__", ""), step.__name__)

        def timed() -> None:
            start = time.time()
            t0 = time.perf_counter()
            try:
                if self.profile is not None:
                    self.profile.runcall(step)
                else:
                    step()
            finally:
                line = json.dumps({"kind": kind, "start": start,
                                   "s": time.perf_counter() - t0})
                with self.lock:
                    self.out.write(line + "\n")
                    self.out.flush()

        return timed


WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
"""Statements that take SQLite's write lock (held from then to the transaction's end)."""

RECONCILER_THREAD = "neocloud-reconciler"
"""Name of the reconciler thread (``ReconcilerThread``)."""


def time_write_lock(engine: Engine, out: IO[str], lock: threading.Lock) -> None:
    """Append to ``out``, for each SQLite transaction of ``engine`` that wrote, how long
    its first write statement took (kind ``sqlite first write ...``: mostly the wait for
    the write lock, SQLite's busy handler polling) and how long it then held the write
    lock (kind ``sqlite write lock ...``: from the end of that statement to the
    connection's return to the pool, so the commit included), seconds; by the thread
    that ran it (the reconciler thread, or ``API``: every other thread)."""

    def who() -> str:
        return ("reconciler thread" if threading.current_thread().name == RECONCILER_THREAD
                else "API")

    def write(kind: str, start: float, s: float) -> None:
        line = json.dumps({"kind": f"{kind}, {who()}", "start": start, "s": s})
        with lock:
            out.write(line + "\n")
            out.flush()

    def before(conn: Any, _cursor: object, statement: str, *_args: object) -> None:
        if "write_t0" not in conn.info and \
                statement.lstrip()[:7].upper().startswith(WRITES):
            conn.info["first_write_t0"] = time.perf_counter()

    def after(conn: Any, *_args: object) -> None:
        t0 = conn.info.pop("first_write_t0", None)
        if t0 is not None:
            write("sqlite first write", time.time(), time.perf_counter() - t0)
            conn.info["write_t0"] = (time.time(), time.perf_counter())

    def returned(_dbapi_conn: object, record: Any) -> None:
        t0 = record.info.pop("write_t0", None)
        record.info.pop("first_write_t0", None)
        if t0 is not None:
            write("sqlite write lock", t0[0], time.perf_counter() - t0[1])

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "checkin", returned)


def queue_sqlite_writers(engine: Engine) -> None:
    """The experiment ``--sqlite-writer-queue``: one lock in this process, taken before a
    transaction's first write statement and released when it commits or rolls back (or
    its connection returns to the pool), so that the writers of this process wait for
    SQLite's write lock in turn, woken as soon as it is free, instead of polling it with
    SQLite's busy handler (which sleeps up to 100 ms between tries and can miss many
    short free gaps in a row). The control plane has no such queue: this measures what
    one in ``db/engine.py`` would give. A writer that waits more than the busy timeout
    (30 s) goes on without it."""
    gate = threading.Lock()

    def before(conn: Any, _cursor: object, statement: str, *_args: object) -> None:
        if "queued" not in conn.info and statement.lstrip()[:7].upper().startswith(WRITES):
            conn.info["queued"] = gate.acquire(timeout=30)

    def ended(conn: Any) -> None:
        if conn.info.pop("queued", False):
            gate.release()

    def returned(_dbapi_conn: object, record: Any) -> None:
        if record.info.pop("queued", False):
            gate.release()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "commit", ended)
    event.listen(engine, "rollback", ended)
    event.listen(engine, "checkin", returned)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--timings", type=Path, required=True)
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--interval-s", type=float, default=1.0,
                    help="reconcile interval (the control plane's default: 1 s)")
    ap.add_argument("--sqlite-writer-queue", action="store_true",
                    help="experiment: queue this process's SQLite writers "
                         "(queue_sqlite_writers)")
    args = ap.parse_args()
    settings = Settings(home=args.home, database_url=args.database_url, backend="fake",
                        register_local_node=False, reconcile_interval_s=args.interval_s,
                        usage_period_s=3600.0)
    app = create_app(settings, backends={"fake": FakeBackend()})
    profile = cProfile.Profile() if args.profile else None
    with args.timings.open("a", encoding="utf-8") as out:
        timer = StepTimer(out, profile)
        thread = app.state.reconcilers.thread
        thread.steps = [timer.wrap(step) for step in thread.steps]
        engine = app.state.db.engine
        if engine.dialect.name == "sqlite":
            time_write_lock(engine, out, timer.lock)
            if args.sqlite_writer_queue:
                queue_sqlite_writers(engine)
        config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning",
                                lifespan="on", access_log=False)
        # uvicorn re-raises the SIGTERM it caught once the lifespan ended: this handler
        # then writes the profile and exits
        signal.signal(signal.SIGTERM, lambda _sig, _frame: finish(profile, args.profile))
        uvicorn.Server(config).run()
    finish(profile, args.profile)


def finish(profile: cProfile.Profile | None, path: Path | None) -> None:
    """Write the profile (when one was taken) and exit."""
    if profile is not None and path is not None:
        profile.dump_stats(str(path))
    sys.exit(0)


if __name__ == "__main__":
    main()
