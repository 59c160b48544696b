"""The control plane under test: the real app (API, gateway, reconcilers) on the fake
backend, served over HTTP on a loopback port by uvicorn, one process.

Started by ``run.py``. Each reconciler step of the reconciler thread is timed; every pass
of a step appends one JSON line ``{"kind": ..., "start": ..., "s": ...}`` (seconds, wall
clock) to ``--timings``. With ``--profile FILE`` the reconciler thread runs under cProfile
and the stats are written to FILE when the process ends (SIGTERM).

Usage: python benchmarks/fleet/server.py --database-url URL --home DIR --port N
       --timings FILE [--profile FILE] [--interval-s S]
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
from typing import IO

import uvicorn

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
        self._lock = threading.Lock()

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
                with self._lock:
                    self.out.write(line + "\n")
                    self.out.flush()

        return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--timings", type=Path, required=True)
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--interval-s", type=float, default=1.0,
                    help="reconcile interval (the control plane's default: 1 s)")
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
