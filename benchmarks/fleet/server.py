"""The control plane under test: the real app (API, gateway, reconcilers) on the fake
backend, served over HTTP on a loopback port by uvicorn, one process.

Started by ``run.py``. Each step of the reconciler thread and of the metering thread is
timed; every pass of a step appends one JSON line ``{"kind": ..., "start": ..., "s":
...}`` (seconds, wall clock) to ``--timings``. So do the parts of a deployments pass a new
deployment can wait behind (:func:`time_parts`): the settled read, each changed-first
look that ran something (with the ids it ran), each route table rebuild (with how many
deployments), and each full garbage collection over 50 ms. On SQLite, for each write transaction,
the wait for the write lock and its hold are appended there too
(:func:`time_write_lock`). With ``--profile FILE`` the reconciler thread runs under
cProfile, and so does each deployment worker thread (one profiler per thread,
:class:`WorkerProfiles`); the stats of all of them are written together to FILE when the
process ends (SIGTERM).

Usage: python benchmarks/fleet/server.py --database-url URL --home DIR --port N
       --timings FILE [--profile FILE] [--interval-s S] [--sqlite-no-writer-queue]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import json
import pstats
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
from neocloud.server.db import engine as engine_module
from neocloud.server.db.engine import make_engine
from neocloud.server.settings import Settings

#: Name of each step of the reconciler thread, by the qualified name of its function.
STEP_KINDS = {
    "NodeReconciler.run_once": "nodes",
    "DeploymentReconciler.run_once": "deployments",
    "DeploymentReconciler.run_step": "deployments step",
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

    def wrap(self, step: Callable[[], object], *, profiled: bool = True
             ) -> Callable[[], object]:
        kind = STEP_KINDS.get(getattr(step, "__qualname__", ""), step.__name__)
        profile = self.profile if profiled else None

        def timed() -> None:
            start = time.time()
            t0 = time.perf_counter()
            try:
                if profile is not None:
                    profile.runcall(step)
                else:
                    step()
            finally:
                line = json.dumps({"kind": kind, "start": start,
                                   "s": time.perf_counter() - t0})
                with self.lock:
                    self.out.write(line + "\n")
                    self.out.flush()

        return timed


class WorkerProfiles:
    """One profiler per deployment worker thread (cProfile profiles only the thread that
    enabled it): each deployment step runs under its thread's profiler."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._mine = threading.local()
        self._lock = threading.Lock()

    def wrap(self, step: Callable[..., None]) -> Callable[..., None]:
        def profiled(*args: Any, **kwargs: Any) -> None:
            prof = getattr(self._mine, "profile", None)
            if prof is None:
                prof = self._mine.profile = cProfile.Profile()
                with self._lock:
                    self.profiles.append(prof)
            prof.runcall(step, *args, **kwargs)

        return profiled


WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
"""Statements that take SQLite's write lock (held from then to the transaction's end)."""

RECONCILER_THREAD = "neocloud-reconciler"
"""Name of the reconciler thread (``ReconcilerThread``)."""
METERING_THREAD = "neocloud-metering"
"""Name of the thread of the usage flush and metering (a second ``ReconcilerThread``)."""


def time_write_lock(engine: Engine, out: IO[str], lock: threading.Lock) -> None:
    """Append to ``out``, for each SQLite transaction of ``engine`` that wrote, how long
    its first write statement took (kind ``sqlite first write ...``: mostly the wait for
    the write lock: in the control plane's queue of writers, ``db/sqlite_writers.py``,
    then for SQLite's lock itself, against other processes) and how long it then held the write
    lock (kind ``sqlite write lock ...``: from the end of that statement to the
    connection's return to the pool, so the commit included), seconds; by the thread
    that ran it (the reconciler thread, or ``API``: every other thread)."""

    def who() -> str:
        name = threading.current_thread().name
        return ("reconciler thread" if name == RECONCILER_THREAD
                else "metering thread" if name == METERING_THREAD else "API")

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


def time_parts(app: Any, out: IO[str], lock: threading.Lock) -> None:
    """Time each full pass of the deployment reconciler (kind ``deployments``; the
    thread's step, a full pass or a look, is ``deployments step``), its parts (kinds
    ``deployments: ...``), the route table's rebuilds (``routes refresh``, with ``n``:
    deployments, ``null``: the whole table) and each garbage collection of the oldest
    generation that took over 50 ms (``gc gen2``), appended to ``out`` as the steps
    are."""
    deps = app.state.reconcilers.deployments

    def write(kind: str, start: float, s: float, **extra: Any) -> None:
        line = json.dumps({"kind": kind, "start": start, "s": s, **extra})
        with lock:
            if not out.closed:  # a collection at the process's exit comes after it
                out.write(line + "\n")
                out.flush()

    def timed(kind: str, fn: Callable[..., Any], *, always: bool = True,
              extra: Callable[[tuple[Any, ...], Any], dict[str, Any]] | None = None
              ) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, t0 = time.time(), time.perf_counter()
            result = fn(*args, **kwargs)
            if always or result:
                write(kind, start, time.perf_counter() - t0,
                      **(extra(args, result) if extra is not None else {}))
            return result
        return wrapper

    settled = timed("deployments: settled read", deps._settled)
    look = timed("deployments: look", deps._changed_first, always=False,
                 extra=lambda _a, ran: {"ran": sorted(ran)})
    # the thread's step is a full pass or a look (``run_step``): the passes apart
    full_pass = timed("deployments", deps.run_once)
    deps.run_once = full_pass  # type: ignore[method-assign]
    deps._settled = settled  # type: ignore[method-assign]
    deps._changed_first = look  # type: ignore[method-assign]
    if deps.on_change is not None:
        deps.on_change = timed("routes refresh", deps.on_change, extra=lambda a, _r: {
            "n": len(a[0]) if a and a[0] is not None else None})
    gc_t0: list[tuple[float, float]] = []

    def collected(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            gc_t0[:] = [(time.time(), time.perf_counter())]
        elif gc_t0:
            start, t0 = gc_t0.pop()
            if time.perf_counter() - t0 > 0.05:
                write("gc gen2", start, time.perf_counter() - t0)

    gc.callbacks.append(collected)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--timings", type=Path, required=True)
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--interval-s", type=float, default=1.0,
                    help="reconcile interval (the control plane's default: 1 s)")
    ap.add_argument("--sqlite-no-writer-queue", action="store_true",
                    help="baseline (SQLite): no queue of the writers, SQLite's busy "
                         "handler alone, as before db/sqlite_writers.py")
    ap.add_argument("--switch-interval-s", type=float, default=None,
                    help="experiment: the interpreter's thread switch interval "
                         "(sys.setswitchinterval; Python's default 0.005 s)")
    args = ap.parse_args()
    if args.switch_interval_s is not None:
        sys.setswitchinterval(args.switch_interval_s)
    settings = Settings(home=args.home, database_url=args.database_url, backend="fake",
                        register_local_node=False, reconcile_interval_s=args.interval_s,
                        usage_period_s=3600.0)
    if args.sqlite_no_writer_queue:
        # create_app opens the database through db.engine.make_engine
        engine_module.make_engine = functools.partial(  # type: ignore[method-assign]
            make_engine, queue_writers=False)
    app = create_app(settings, backends={"fake": FakeBackend()})
    profile = cProfile.Profile() if args.profile else None
    workers = WorkerProfiles() if args.profile else None
    if workers is not None:
        # the pass hands each deployment's step to a worker thread (OrderedWorkers)
        deps = app.state.reconcilers.deployments
        deps._reconcile = workers.wrap(deps._reconcile)
    with args.timings.open("a", encoding="utf-8") as out:
        timer = StepTimer(out, profile)
        thread = app.state.reconcilers.thread
        thread.steps = [timer.wrap(step) for step in thread.steps]
        metering = app.state.reconcilers.metering
        if metering is not None:  # timed, not profiled (a profiler is one thread's)
            metering.steps = [timer.wrap(step, profiled=False) for step in metering.steps]
        time_parts(app, out, timer.lock)
        engine = app.state.db.engine
        if engine.dialect.name == "sqlite":
            time_write_lock(engine, out, timer.lock)
        config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning",
                                lifespan="on", access_log=False)
        # uvicorn re-raises the SIGTERM it caught once the lifespan ended: this handler
        # then writes the profile and exits
        signal.signal(signal.SIGTERM,
                      lambda _sig, _frame: finish(profile, workers, args.profile))
        uvicorn.Server(config).run()
    finish(profile, workers, args.profile)


def finish(profile: cProfile.Profile | None, workers: WorkerProfiles | None,
           path: Path | None) -> None:
    """Write the profiles (when taken: the reconciler thread's and the deployment
    workers', added together) and exit."""
    if profile is not None and path is not None:
        stats = pstats.Stats(profile)
        for prof in workers.profiles if workers is not None else []:
            prof.create_stats()
            stats.add(prof)
        stats.dump_stats(str(path))
    sys.exit(0)


if __name__ == "__main__":
    main()
