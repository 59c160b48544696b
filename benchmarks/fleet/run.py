"""Fleet scale by simulation: one control plane, thousands of simulated nodes.

One control plane (``server.py``: the real app and reconcilers, served over HTTP) on its
own database, with ``--nodes`` simulated nodes (fake backend: a process is "running" from
its start, ready at once) and ``--deployments`` deployments of ``--replicas-per`` replicas
each, submitted over HTTP as fast as the API accepts them. While they roll out, and for
``--steady-s`` seconds after, a mixed load of reads and writes runs against the API at the
same time. Measured, per database:

* submit -> placed (allocation written, process started) and submit -> ready, per replica:
  p50/p99 and the time until every replica was ready (the Kubernetes pod start SLO:
  p99 <= 5 s, without image pulls);
* reconcile pass time per reconciler kind (p50/p99/max);
* API latency p50/p99, mutating and read calls apart (SLO: p99 <= 1 s);
* control-plane memory: peak RSS of the control-plane process (``VmHWM``);
* the invariant check of the final database (``neocloud admin check``).

By default PostgreSQL at the given size and SQLite at a tenth of it; the PostgreSQL
database is created for the run and dropped after it. Prints the load average, a table,
then one JSON line.

Usage: python benchmarks/fleet/run.py [--nodes 5000 --deployments 5000 --replicas-per 10]
       [--db both|postgresql|sqlite] [--quick] [--rate N] [--pg-url URL] [--profile DIR]
       [--sqlite-no-writer-queue] [--keep-timings DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import func, select

from neocloud.models import NodeCreate
from neocloud.server.bootstrap import bootstrap
from neocloud.server.db.engine import Database, migrate
from neocloud.server.db.tables import Deployment, Replica
from neocloud.server.invariants import check_database
from neocloud.server.services import nodes as node_svc
from neocloud.server.services import shapes as shape_svc

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

#: Shapes the deployments alternate between (default shapes of every cloud): a CPU
#: replica and a one-GPU replica.
SHAPES = ("cpu.small", "gpu.h100")
#: Every simulated node: 128 cores, 2 TiB, 8 H100 (room for 8 GPU and many CPU replicas).
NODE_CPU_MILLI = 128_000
NODE_MEMORY_MIB = 2_097_152
NODE_GPUS = [{"type": "H100", "count": 8, "memory_mib": 81_559}]

SUBMITTERS = 2
"""Threads that POST the deployments (each waits for its answer before the next)."""


def pct(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, nearest rank) of ``values``; ``None`` when empty."""
    if not values:
        return None
    xs = sorted(values)
    k = max(0, min(len(xs) - 1, int(round(q / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident memory of process ``pid`` (``VmHWM``, MiB); ``None`` if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# -- databases ----------------------------------------------------------------------------


class PgDatabase:
    """A PostgreSQL database of our own for one run: created, then dropped."""

    def __init__(self, base_url: str, name: str):
        self.base_url = base_url.rstrip("/")
        self.name = name
        sa = self.base_url.replace("postgresql+psycopg://", "postgresql://")
        self._admin = f"{sa}/postgres"

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.name}"

    def create(self) -> None:
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# -- load ---------------------------------------------------------------------------------


@dataclass
class Calls:
    """API latencies (seconds) by phase and class (``mutating``/``read``), and failures."""

    lat: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, phase: str, cls: str, seconds: float, status: int, ok: set[int]) -> None:
        with self.lock:
            self.lat.setdefault((phase, cls), []).append(seconds)
            if status not in ok:
                key = f"{cls} {status}"
                self.errors[key] = self.errors.get(key, 0) + 1


@dataclass
class Load:
    """The mixed load: readers and writers in closed loops while the run lasts."""

    bases: list[str]
    """One URL per control-plane copy; client ``i`` talks to copy ``i % len(bases)``."""
    token: str
    node_names: list[str]
    calls: Calls
    phase: str = "rollout"
    submitted: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    rate: float | None = None
    """Deployments submitted per second (``None``: as fast as the API takes them)."""
    started_at: float = 0.0
    """``time.perf_counter()`` when the submission began (the schedule of ``rate``)."""

    def client(self, i: int) -> httpx.Client:
        return httpx.Client(base_url=self.bases[i % len(self.bases)], timeout=60.0,
                            headers={"Authorization": f"Bearer {self.token}"})

    def timed(self, c: httpx.Client, cls: str, method: str, path: str,
              ok: set[int], **kw: Any) -> int:
        phase = self.phase
        t0 = time.perf_counter()
        try:
            status = c.request(method, path, **kw).status_code
        except httpx.HTTPError:
            status = 0
        self.calls.add(phase, cls, time.perf_counter() - t0, status, ok)
        return status

    def submit(self, todo: queue.Queue[tuple[int, str, str, int]], i: int) -> None:
        """POST deployments from ``todo`` (number, name, shape, replicas) until it is
        empty; with :attr:`rate`, deployment number ``k`` not before ``k / rate`` seconds
        after :attr:`started_at` (a fixed throughput, as the Kubernetes load test)."""
        with self.client(i) as c:
            while True:
                try:
                    k, name, shape, replicas = todo.get_nowait()
                except queue.Empty:
                    return
                if self.rate:
                    due = self.started_at + k / self.rate
                    time.sleep(max(0.0, due - time.perf_counter()))
                body = {"name": name, "service": "embeddings", "shape": shape,
                        "replicas": replicas}
                if self.timed(c, "mutating", "POST", "/api/v1/deployments", {201},
                              json=body) == 201:
                    self.submitted.append(name)

    def probe(self, count: int, every_s: float) -> None:
        """Submit ``count`` one-replica deployments ``p00000``.. one every ``every_s``
        seconds (the latency pods of the Kubernetes density test, on a settled fleet)."""
        with self.client(0) as c:
            for i in range(count):
                if self.stop.is_set():
                    return
                t0 = time.perf_counter()
                self.timed(c, "mutating", "POST", "/api/v1/deployments", {201}, json={
                    "name": f"p{i:05d}", "service": "embeddings", "shape": SHAPES[0],
                    "replicas": 1})
                self.stop.wait(max(0.0, every_s - (time.perf_counter() - t0)))

    def read(self, seed: int) -> None:
        rng = random.Random(seed)
        with self.client(seed) as c:
            while not self.stop.is_set():
                if self.submitted and rng.random() < 0.5:
                    self.timed(c, "read", "GET",
                               f"/api/v1/deployments/{rng.choice(self.submitted)}", {200})
                else:
                    self.timed(c, "read", "GET",
                               f"/api/v1/nodes/{rng.choice(self.node_names)}", {200})

    def write(self, seed: int) -> None:
        """PATCH a spec field that starts no rollout (the drain timeout): a real mutating
        call (row lock, revision, event) that leaves the replicas as they are."""
        rng = random.Random(seed)
        with self.client(seed) as c:
            while not self.stop.is_set():
                if not self.submitted:
                    time.sleep(0.05)
                    continue
                self.timed(c, "mutating", "PATCH",
                           f"/api/v1/deployments/{rng.choice(self.submitted)}", {200},
                           json={"drain_timeout_s": rng.choice((60.0, 90.0, 120.0))})


# -- one run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    nodes: int
    deployments: int
    replicas_per: int

    @property
    def replicas(self) -> int:
        return self.deployments * self.replicas_per


def seconds_between(a: dt.datetime | None, b: dt.datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return (b - a).total_seconds()


def setup(db: Database, size: Size) -> str:
    """Schema, shapes, the admin token and the simulated nodes; returns the token."""
    migrate(db.engine)
    with db.session() as s:
        shape_svc.ensure_defaults(s)
    token = bootstrap(db).token
    assert token is not None
    batch = 500
    for start in range(0, size.nodes, batch):
        with db.session() as s:
            for i in range(start, min(size.nodes, start + batch)):
                node_svc.create_node(s, spec=NodeCreate.model_validate({
                    "name": f"n{i:05d}", "cpu_milli": NODE_CPU_MILLI,
                    "memory_mib": NODE_MEMORY_MIB, "gpus": NODE_GPUS, "backend": "fake"}))
    return token


def start_server(url: str, home: Path, port: int, timings: Path,
                 profile: Path | None, *, no_writer_queue: bool = False,
                 switch_interval_s: float | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(HERE / "server.py"), "--database-url", url, "--home",
           str(home), "--port", str(port), "--timings", str(timings)]
    if switch_interval_s is not None:
        cmd += ["--switch-interval-s", str(switch_interval_s)]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    if no_writer_queue:
        cmd += ["--sqlite-no-writer-queue"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the control plane exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError("the control plane did not answer /healthz within 120 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def count_ready(db: Database) -> tuple[int, int]:
    """(replicas placed, replicas ready): placed = holds a node."""
    with db.session() as s:
        placed = s.scalar(select(func.count()).select_from(Replica)
                          .where(Replica.node_id.is_not(None))) or 0
        ready = s.scalar(select(func.count()).select_from(Replica)
                         .where(Replica.status == "ready")) or 0
    return int(placed), int(ready)


def pass_stats(timings: Sequence[Path], steady_from: float | None
               ) -> dict[str, dict[str, Any]]:
    """Per reconciler kind (over every copy): passes, p50/p99/max seconds (all passes),
    and p50 of the passes that started in the steady phase (every replica ready)."""
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for path in timings:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            by_kind.setdefault(rec["kind"], []).append((rec["start"], rec["s"]))
    out: dict[str, dict[str, Any]] = {}
    for kind, recs in by_kind.items():
        xs = [s for _t, s in recs]
        steady = [s for t, s in recs if steady_from is not None and t >= steady_from]
        out[kind] = {"passes": len(xs), "p50_s": pct(xs, 50), "p99_s": pct(xs, 99),
                     "max_s": max(xs), "steady_p50_s": pct(steady, 50)}
    return out


PROBE_KINDS = ("deployments", "deployments: settled read", "deployments: look",
               "routes refresh", "nodes", "jobs", "pods", "gc gen2")
"""Timed parts of the reconciler thread a probe's wait is told in (``server.py``)."""


def probe_waits(probes: Sequence[tuple[str, str, dt.datetime, dt.datetime | None,
                                       dt.datetime | None]],
                timings: Sequence[Path]) -> list[dict[str, Any]]:
    """Per probe (id, name, created, started, ready: UTC): its submit -> started and ->
    ready seconds, the look that ran it (``None``: a full pass did), and every timed part
    of the reconciler thread (:data:`PROBE_KINDS`) that overlapped its wait, as ``(kind,
    seconds from its submission to the part's start, the part's seconds)``."""
    recs = [json.loads(line) for path in timings for line in path.read_text().splitlines()]
    recs = [r for r in recs if r["kind"] in PROBE_KINDS]
    recs.sort(key=lambda r: r["start"])
    out: list[dict[str, Any]] = []
    for dep_id, name, created, started, ready in sorted(probes, key=lambda p: p[2]):
        t0 = created.timestamp()
        t1 = (ready or started or created).timestamp()
        ran_by = next((r["start"] - t0 for r in recs if r["kind"] == "deployments: look"
                       and dep_id in r.get("ran", ())), None)
        during = [(r["kind"], round(r["start"] - t0, 3), round(r["s"], 3)) for r in recs
                  if r["start"] < t1 and r["start"] + r["s"] > t0]
        out.append({"name": name, "started_s": seconds_between(created, started),
                    "ready_s": seconds_between(created, ready),
                    "look_at_s": ran_by, "during": during})
    return out


def print_probe_waits(waits: Sequence[dict[str, Any]]) -> None:
    """The per-probe account of :func:`probe_waits`, to stderr."""
    for w in waits:
        look = (f"run by a look {fmt(w['look_at_s'])} s after" if w["look_at_s"] is not None
                else "run by a full pass")
        print(f"  probe {w['name']}: started {fmt(w['started_s'])} s, ready "
              f"{fmt(w['ready_s'])} s, {look}", file=sys.stderr)
        for kind, at, secs in w["during"]:
            if kind != "deployments: look" or secs > 0.05:
                print(f"      {at:+8.3f} s  {secs:7.3f} s  {kind}", file=sys.stderr)


def run_one(kind: str, size: Size, *, pg_url: str, timeout_s: float, steady_s: float,
            readers: int, writers: int, profile_dir: Path | None,
            copies: int = 1, probes: int = 20, rate: float | None = None,
            no_writer_queue: bool = False, switch_interval_s: float | None = None,
            keep_timings: Path | None = None) -> dict[str, Any]:
    """``copies`` control planes on one ``kind`` database (``postgresql``/``sqlite``) at
    ``size``; ``rate``: deployments submitted per second (``None``: a burst);
    ``no_writer_queue``: the baseline ``server.py --sqlite-no-writer-queue`` (SQLite);
    ``keep_timings``: a folder to copy the step timings to, with the probes' account
    (:func:`probe_waits`, also printed)."""
    tmp = Path(tempfile.mkdtemp(prefix="neocloud-fleet-"))
    pg = PgDatabase(pg_url, f"bench_fleet_{os.getpid()}") if kind == "postgresql" else None
    if pg is not None:
        pg.create()
        url = pg.url
    else:
        url = f"sqlite:///{tmp / 'neocloud.db'}"
    db = Database(url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t0 = time.perf_counter()
        token = setup(db, size)
        setup_s = time.perf_counter() - t0
        ports = [free_port() for _ in range(copies)]
        timings = [tmp / f"timings-{i}.jsonl" for i in range(copies)]
        for i, port in enumerate(ports):
            profile = (profile_dir / f"reconcilers-{kind}-{i}.prof" if profile_dir
                       else None)
            procs.append(start_server(url, tmp / f"home{i}", port, timings[i], profile,
                                      no_writer_queue=no_writer_queue,
                                      switch_interval_s=switch_interval_s))
        calls = Calls()
        load = Load(bases=[f"http://127.0.0.1:{p}" for p in ports], token=token,
                    node_names=[f"n{i:05d}" for i in range(size.nodes)], calls=calls,
                    rate=rate)
        todo: queue.Queue[tuple[int, str, str, int]] = queue.Queue()
        for i in range(size.deployments):
            todo.put((i, f"d{i:05d}", SHAPES[i % len(SHAPES)], size.replicas_per))
        threads = [threading.Thread(target=load.submit, args=(todo, i), daemon=True)
                   for i in range(max(SUBMITTERS, copies))]
        mixed = [threading.Thread(target=load.read, args=(i,), daemon=True)
                 for i in range(readers)]
        mixed += [threading.Thread(target=load.write, args=(100 + i,), daemon=True)
                  for i in range(writers)]
        start = load.started_at = time.perf_counter()
        for t in threads + mixed:
            t.start()
        submit_s: float | None = None
        all_ready_s: float | None = None
        placed = ready = 0
        last_print = 0.0
        while time.perf_counter() - start < timeout_s:
            time.sleep(1.0)
            if submit_s is None and not any(t.is_alive() for t in threads):
                submit_s = time.perf_counter() - start
            placed, ready = count_ready(db)
            now = time.perf_counter() - start
            if now - last_print >= 10:
                last_print = now
                print(f"  [{kind}] {now:6.0f} s: {len(load.submitted)}/{size.deployments} "
                      f"deployments submitted, {placed}/{size.replicas} placed, "
                      f"{ready} ready", file=sys.stderr, flush=True)
            if submit_s is not None and ready >= size.replicas:
                all_ready_s = now
                break
        steady_from = time.time() if all_ready_s is not None else None
        load.phase = "steady"
        if all_ready_s is not None:
            prober = threading.Thread(target=load.probe, args=(probes, steady_s / max(
                1, probes)), daemon=True)
            prober.start()
            time.sleep(steady_s)
            prober.join(timeout=60)
            time.sleep(3.0)  # the last probe's placement and ready check
        load.stop.set()
        for t in mixed:
            t.join(timeout=120)
        rss = [peak_rss_mib(p.pid) for p in procs]
        for p in procs:
            stop_server(p)
        procs = []
        report = check_database(db)
        with db.session() as s:
            rows = s.execute(select(Deployment.name, Deployment.created_at, Replica.started_at,
                                    Replica.ready_at)
                             .join(Deployment, Deployment.id == Replica.deployment_id)).all()
        if keep_timings is not None:
            with db.session() as s:
                probe_rows = s.execute(select(Deployment.id, Deployment.name,
                                              Deployment.created_at, Replica.started_at,
                                              Replica.ready_at)
                                       .join(Replica, Replica.deployment_id == Deployment.id)
                                       .where(Deployment.name.like("p%"))).all()
            waits = probe_waits([(r[0], r[1], r[2], r[3], r[4]) for r in probe_rows],
                                timings)
            keep_timings.mkdir(parents=True, exist_ok=True)
            for i, path in enumerate(timings):
                shutil.copy(path, keep_timings / f"timings-{kind}-{i}.jsonl")
            (keep_timings / f"probes-{kind}.json").write_text(json.dumps(waits, indent=1))
            print_probe_waits(waits)
        fleet = [(c, p, r) for n, c, p, r in rows if n.startswith("d")]
        probed = [(c, p, r) for n, c, p, r in rows if n.startswith("p")]
        to_placed = [x for x in (seconds_between(c, p) for c, p, _r in fleet) if x is not None]
        to_ready = [x for x in (seconds_between(c, r) for c, _p, r in fleet) if x is not None]
        probe_ready = [x for x in (seconds_between(c, r) for c, _p, r in probed)
                       if x is not None]
        starts = sorted(p for _c, p, _r in fleet if p is not None)
        # placement throughput: replicas placed and started per second, from the first
        # start to the last (the submission and the wait for the first pass left out)
        span = (starts[-1] - starts[0]).total_seconds() if len(starts) > 1 else 0.0
        api: dict[str, dict[str, Any]] = {}
        for (phase, cls), xs in sorted(calls.lat.items()):
            api[f"{phase}_{cls}"] = {"calls": len(xs), "p50_s": pct(xs, 50),
                                     "p99_s": pct(xs, 99), "max_s": max(xs)}
        return {
            "db": kind, "copies": copies, "nodes": size.nodes, "deployments": size.deployments,
            "replicas": size.replicas, "setup_s": setup_s, "submit_s": submit_s,
            "all_ready_s": all_ready_s, "placed": placed, "ready": ready,
            "placed_p50_s": pct(to_placed, 50), "placed_p99_s": pct(to_placed, 99),
            "ready_p50_s": pct(to_ready, 50), "ready_p99_s": pct(to_ready, 99),
            "ready_per_s": (size.replicas / all_ready_s) if all_ready_s else None,
            "placed_per_s": (len(starts) - 1) / span if span > 0 else None,
            "rate": rate, "submit_per_s": (len(load.submitted) / submit_s
                                           if submit_s else None),
            "probes": len(probed), "probes_ready": len(probe_ready),
            "probe_ready_p50_s": pct(probe_ready, 50), "probe_ready_p99_s": pct(probe_ready, 99),
            "passes": pass_stats(timings, steady_from), "api": api,
            "api_errors": dict(calls.errors),
            "rss_peak_mib": max((x for x in rss if x is not None), default=None),
            "rss_peak_mib_each": rss,
            "invariants_ok": report.ok, "violations": len(report.violations),
        }
    finally:
        for p in procs:
            stop_server(p)
        db.dispose()
        if pg is not None:
            pg.drop()


# -- output -------------------------------------------------------------------------------


def fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return (f"{x:.3f}" if x < 10 else f"{x:.1f}") + unit
    return f"{x}{unit}"


def table(runs: list[dict[str, Any]]) -> str:
    heads = ["metric"] + [f"{r['db']}{' x' + str(r['copies']) if r['copies'] > 1 else ''} "
                          f"{r['nodes']} nodes / {r['replicas']} replicas" for r in runs]
    rows: list[list[str]] = []

    def row(name: str, get: Any, unit: str = "") -> None:
        rows.append([name] + [fmt(get(r), unit) for r in runs])

    row("setup (schema, nodes)", lambda r: r["setup_s"], " s")
    row("submit all deployments", lambda r: r["submit_s"], " s")
    row("submission rate (deployments/s)", lambda r: (
        f"{fmt(r['submit_per_s'])} ({'fixed ' + fmt(r['rate']) if r['rate'] else 'burst'})"))
    row("submit -> all replicas ready", lambda r: r["all_ready_s"], " s")
    row("replicas placed / ready at end", lambda r: f"{r['placed']} / {r['ready']}")
    row("replicas ready per second", lambda r: r["ready_per_s"])
    row("placement rate, first to last start (replicas/s)", lambda r: r["placed_per_s"])
    row("submit -> placed+started p50", lambda r: r["placed_p50_s"], " s")
    row("submit -> placed+started p99", lambda r: r["placed_p99_s"], " s")
    row("submit -> ready p50", lambda r: r["ready_p50_s"], " s")
    row("submit -> ready p99", lambda r: r["ready_p99_s"], " s")
    row("settled fleet: new replica ready p50", lambda r: r["probe_ready_p50_s"], " s")
    row("settled fleet: new replica ready p99 (SLO 5 s)",
        lambda r: r["probe_ready_p99_s"], " s")
    row("  probes ready / submitted", lambda r: f"{r['probes_ready']} / {r['probes']}")
    kinds = sorted({k for r in runs for k in r["passes"]})
    for k in kinds:
        def get(r: dict[str, Any], k: str = k) -> str:
            p = r["passes"].get(k)
            if p is None:
                return "-"
            return (f"{fmt(p['p50_s'])} / {fmt(p['p99_s'])} / {fmt(p['max_s'])} "
                    f"(n={p['passes']}; steady p50 {fmt(p['steady_p50_s'])})")
        row(f"pass {k} p50/p99/max s", get)
    for key in ("rollout_mutating", "rollout_read", "steady_mutating", "steady_read"):
        def api(r: dict[str, Any], key: str = key) -> str:
            a = r["api"].get(key)
            if a is None:
                return "-"
            return f"{fmt(a['p50_s'])} / {fmt(a['p99_s'])} (n={a['calls']})"
        row(f"API {key.replace('_', ' ')} p50/p99 s", api)
    row("API errors", lambda r: ", ".join(f"{k}: {v}" for k, v in r["api_errors"].items())
        or "none")
    row("control-plane RSS peak", lambda r: r["rss_peak_mib"], " MiB")
    row("invariant check", lambda r: "ok" if r["invariants_ok"]
        else f"{r['violations']} violations")
    widths = [max(len(x[i]) for x in [heads] + rows) for i in range(len(heads))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) for x in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--deployments", type=int, default=5000)
    ap.add_argument("--replicas-per", type=int, default=10)
    ap.add_argument("--db", choices=("both", "postgresql", "sqlite"), default="both",
                    help="both: PostgreSQL at the size given and SQLite at a tenth of it")
    ap.add_argument("--quick", action="store_true",
                    help="100 nodes, 100 deployments x 5 replicas (SQLite: a tenth), "
                         "10 s steady")
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432",
                    help="PostgreSQL server (a database is created there and dropped)")
    ap.add_argument("--timeout-s", type=float, default=3600.0,
                    help="give up waiting for every replica to be ready after this long")
    ap.add_argument("--steady-s", type=float, default=20.0,
                    help="mixed load kept up this long once every replica is ready")
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--writers", type=int, default=1)
    ap.add_argument("--probes", type=int, default=20,
                    help="one-replica deployments submitted one by one once the fleet is "
                         "ready, over --steady-s (their start latency is the SLO's)")
    ap.add_argument("--copies", type=int, default=1,
                    help="control-plane copies on the PostgreSQL database (SQLite: 1)")
    ap.add_argument("--rate", type=float, default=None,
                    help="submit the deployments at this many per second (default: as "
                         "fast as the API takes them, a burst)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="folder for cProfile stats of the reconciler thread and the "
                         "deployment worker threads (added together)")
    ap.add_argument("--sqlite-no-writer-queue", action="store_true",
                    help="baseline (SQLite): the control plane's writers poll SQLite's "
                         "write lock (its busy handler) instead of queueing for it in "
                         "the process (server/db/sqlite_writers.py)")
    ap.add_argument("--switch-interval-s", type=float, default=None,
                    help="experiment: the control plane's thread switch interval "
                         "(sys.setswitchinterval, s; Python's default 0.005)")
    ap.add_argument("--keep-timings", type=Path, default=None,
                    help="folder to keep the control plane's step timings in, with each "
                         "probe's submit, start, ready and the reconciler's parts it "
                         "waited behind (also printed)")
    args = ap.parse_args()
    if args.copies > 1:
        # Each copy would run its own fake backend: the simulated processes one copy
        # starts live in its memory, so the other reads them as gone and restarts them.
        ap.error("--copies > 1 needs a fake backend shared by the copies (the fake backend "
                 "keeps its simulated processes in one process's memory)")
    if args.quick:
        args.nodes, args.deployments, args.replicas_per = 100, 100, 5
        args.steady_s = min(args.steady_s, 10.0)
    load1, load5, load15 = os.getloadavg()
    print(f"load average: {load1:.2f} {load5:.2f} {load15:.2f} ({os.cpu_count()} CPUs)",
          flush=True)
    size = Size(args.nodes, args.deployments, args.replicas_per)
    tenth = Size(max(1, args.nodes // 10), max(1, args.deployments // 10), args.replicas_per)
    plan = {"both": [("postgresql", size), ("sqlite", tenth)],
            "postgresql": [("postgresql", size)], "sqlite": [("sqlite", size)]}[args.db]
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs = [run_one(kind, sz, pg_url=args.pg_url, timeout_s=args.timeout_s,
                    steady_s=args.steady_s, readers=args.readers, writers=args.writers,
                    profile_dir=args.profile,
                    copies=args.copies if kind == "postgresql" else 1, probes=args.probes,
                    rate=args.rate, no_writer_queue=args.sqlite_no_writer_queue,
                    switch_interval_s=args.switch_interval_s,
                    keep_timings=args.keep_timings)
            for kind, sz in plan]
    print(table(runs))
    end = os.getloadavg()
    print(json.dumps({"bench": "fleet", "load_avg_start": [load1, load5, load15],
                      "load_avg_end": list(end), "runs": runs}))


if __name__ == "__main__":
    main()
