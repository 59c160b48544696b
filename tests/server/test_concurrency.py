"""The reconciler core under concurrent calls (both databases, simulated GPU nodes).

Two reproducers of lost stops and deletes, each landing a user's call at the exact moment a
reconciler acts on the same workload, then a randomized test: rounds of concurrent
creates, scales, stops and deletes of deployments and jobs (threads released together by
a barrier) while the reconcilers run, against a small quota; the invariant checker reads
the database while each round runs and the database and the fake backend after it.

``NEOCLOUD_CONCURRENCY_ROUNDS`` (default 20) and ``NEOCLOUD_CONCURRENCY_SEED`` change the
randomized test; it prints its figures (rounds, operations, violations per invariant).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from neocloud.server.invariants import check_database
from neocloud.server.services import events as events_svc
from neocloud.server.services import placement as placement_svc
from tests.server.helpers import Cloud

H100x2 = [{"type": "H100", "count": 2, "memory_mib": 81559}]


# -- helpers -------------------------------------------------------------------------


def _reconcilers(cloud: Cloud) -> list[Any]:
    st: Any = cloud.app.state
    rec = getattr(st, "reconcilers", None)
    if rec is not None:
        return [rec.deployments, rec.jobs, rec.pods]
    ex = st.extras
    return [ex["reconciler"], ex["job_reconciler"], ex["pod_reconciler"]]


def _pass(cloud: Cloud, times: int = 1) -> None:
    for _ in range(times):
        for r in _reconcilers(cloud):
            r.run_once()


def _problems(cloud: Cloud) -> list[str]:
    report = check_database(cloud.app.state.db, cloud.app.state.backends)
    return [f"{v.invariant}: {v.message}" for v in report.violations]


class ReconcilerLoop:
    """The reconcilers in a thread of their own (as the control plane runs them)."""

    def __init__(self, cloud: Cloud):
        self.cloud = cloud
        self.stop_flag = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                _pass(self.cloud)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.errors.append(e)
                return
            time.sleep(0.002)

    def __enter__(self) -> ReconcilerLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(30)


def _setup_team(cloud: Cloud, *, gpus: int) -> str:
    cloud.add_fake_node("gpu-a", gpus=H100x2)
    tok = cloud.new_workspace("team")
    r = cloud.api("PUT", "/workspaces/team/quota", json={"gpus_total": gpus})
    assert r.status_code == 200, r.text
    return tok


def _land_during(target: str, fn: Callable[[], None], hit: Callable[[Any], bool],
                 monkeypatch: pytest.MonkeyPatch, where: str) -> list[threading.Thread]:
    """Patch ``where`` (``schedule`` of placement or ``record`` of events) so that, the
    first time a reconciler calls it for ``target``, ``fn`` runs in another thread at that
    very moment (the reconciler waits for it, at most 2 s: where the fix holds a lock, the
    call waits for the reconciler instead). Returns the thread of ``fn`` once started
    (empty until then)."""
    fired: list[threading.Thread] = []
    module: Any = placement_svc if where == "schedule" else events_svc
    original = getattr(module, where)

    def wrapped(*args: Any, **kw: Any) -> Any:
        if not fired and hit(kw) and threading.current_thread().name != target:
            start = threading.Barrier(2)

            def go() -> None:
                start.wait()
                fn()

            t = threading.Thread(target=go, name=target, daemon=True)
            t.start()
            fired.append(t)
            start.wait()
            t.join(2.0)
        return original(*args, **kw)

    monkeypatch.setattr(module, where, wrapped)
    return fired


# -- reproducers ---------------------------------------------------------------------


def test_stop_that_lands_while_the_job_is_placed_wins(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quota 1 GPU: job ``a`` runs, ``b`` waits. Both are stopped at once; ``b``'s stop
    lands while the reconciler places ``b`` (freed by ``a``'s stop). The stop wins: ``b``
    never runs, nothing keeps its GPU, and both delete cleanly."""
    tok = _setup_team(cloud, gpus=1)
    for name in ("a", "b"):
        r = cloud.api("POST", "/jobs", tok, json={"name": name, "command": ["train"],
                                                  "shape": "gpu.h100"})
        assert r.status_code == 201, r.text
    _pass(cloud, 2)
    assert cloud.api("GET", "/jobs/a", tok).json()["status"] == "running"
    assert cloud.api("GET", "/jobs/b", tok).json()["status"] == "queued"

    answers: dict[str, int] = {}
    ws_of_b: list[str] = []

    def stop_b() -> None:
        answers["b"] = cloud.api("POST", "/jobs/b/stop", tok).status_code

    def placing_b(kw: dict[str, Any]) -> bool:
        return bool(ws_of_b) and kw.get("workspace_id") == ws_of_b[0]

    ws_of_b.append(_workspace_id(cloud, tok))
    fired = _land_during("stop-b", stop_b, placing_b, monkeypatch, "schedule")
    barrier = threading.Barrier(2)

    def stop_a() -> None:
        barrier.wait()
        answers["a"] = cloud.api("POST", "/jobs/a/stop", tok).status_code

    t = threading.Thread(target=stop_a)
    t.start()
    barrier.wait()
    t.join(10)
    _pass(cloud, 1)
    assert fired, "the reconciler never placed b"
    fired[0].join(40)
    _pass(cloud, 4)
    assert answers == {"a": 200, "b": 200}
    reasons_b = [e["reason"] for e in cloud.api("GET", "/jobs/b/events", tok).json()["data"]]
    first_stop = min(reasons_b.index(r) for r in ("Stopping", "Stopped") if r in reasons_b)
    after = reasons_b[first_stop:]
    assert "Scheduled" not in after and "Running" not in after, reasons_b
    for name in ("a", "b"):
        assert cloud.api("GET", f"/jobs/{name}", tok).json()["status"] == "stopped"
    assert _problems(cloud) == []
    for name in ("a", "b"):
        r = cloud.api("DELETE", f"/jobs/{name}", tok)
        assert r.status_code == 204, r.text
    assert _problems(cloud) == []
    # The GPU is free again: new work of the workspace is placed.
    cloud.api("POST", "/jobs", tok, json={"name": "c", "command": ["x"], "shape": "gpu.h100"})
    _pass(cloud, 2)
    assert cloud.api("GET", "/jobs/c", tok).json()["status"] == "running"


def _workspace_id(cloud: Cloud, tok: str) -> str:
    me = cloud.api("GET", "/whoami", tok).json()
    return str(me["workspace"]["id"])


def test_two_deletes_at_once_leave_no_deployment(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quota 1 GPU: deployment ``x`` is ready, ``y`` waits. Both are deleted at once;
    ``y``'s DELETE lands while the reconciler writes ``y``'s status. Both DELETEs answer
    204 and both deployments are gone, with nothing running and nothing allocated."""
    tok = _setup_team(cloud, gpus=1)
    for name in ("x", "y"):
        r = cloud.api("POST", "/deployments", tok, json={
            "name": name, "service": "chat", "shape": "gpu.h100", "replicas": 1})
        assert r.status_code == 201, r.text
    _pass(cloud, 2)
    assert cloud.api("GET", "/deployments/x", tok).json()["status"] == "ready"
    assert cloud.api("GET", "/deployments/y", tok).json()["status"] == "pending"

    answers: dict[str, int] = {}

    def delete_y() -> None:
        answers["y"] = cloud.api("DELETE", "/deployments/y", tok).status_code

    def writing_y(kw: dict[str, Any]) -> bool:
        return (kw.get("kind") == "deployment" and kw.get("name") == "y"
                and kw.get("reason") == "StatusChanged")

    fired = _land_during("delete-y", delete_y, writing_y, monkeypatch, "record")
    barrier = threading.Barrier(2)

    def delete_x() -> None:
        barrier.wait()
        answers["x"] = cloud.api("DELETE", "/deployments/x", tok).status_code

    t = threading.Thread(target=delete_x)
    t.start()
    barrier.wait()
    with ReconcilerLoop(cloud) as loop:
        t.join(10)
        deadline = time.monotonic() + 10
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fired, "the reconciler never wrote y's status"
        fired[0].join(40)
    assert not loop.errors, loop.errors
    _pass(cloud, 4)
    assert answers == {"x": 204, "y": 204}
    for name in ("x", "y"):
        r = cloud.api("GET", f"/deployments/{name}", tok)
        assert r.status_code == 404, (name, r.json())
    assert _problems(cloud) == []
    assert cloud.fake.workload_ids() == []


# -- randomized ----------------------------------------------------------------------

ROUNDS = int(os.environ.get("NEOCLOUD_CONCURRENCY_ROUNDS", "20"))
SEED = int(os.environ.get("NEOCLOUD_CONCURRENCY_SEED", "8"))
THREADS = 6
OPS_PER_THREAD = 6
DEPLOYMENTS = ("d0", "d1", "d2")
JOBS = ("j0", "j1", "j2", "j3", "j4", "j5")


@dataclass
class Answer:
    op: str
    name: str
    status: int
    started: float
    answered: float


@dataclass
class Tally:
    ops: int = 0
    violations: Counter[str] = field(default_factory=Counter)
    seen: set[tuple[str, str]] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)

    def add(self, invariant: str, key: str, message: str) -> None:
        if (invariant, key) in self.seen:
            return
        self.seen.add((invariant, key))
        self.violations[invariant] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{invariant}: {message}")


class Sampler:
    """Runs the database-only checker over and over while a round runs."""

    def __init__(self, cloud: Cloud, tally: Tally):
        self.cloud = cloud
        self.tally = tally
        self.samples = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            report = check_database(self.cloud.app.state.db)
            self.samples += 1
            for v in report.violations:
                self.tally.add(str(v.invariant), v.object_id, v.message)
            time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(30)


def _call(cloud: Cloud, kind: str, name: str, token: str | None,
          spec: dict[str, Any]) -> Answer:
    t0 = time.monotonic()
    if kind == "dep_create":
        r = cloud.api("POST", "/deployments", token, json={
            "name": name, "service": "chat", "shape": "gpu.h100", **spec})
    elif kind == "dep_scale":
        r = cloud.api("PATCH", f"/deployments/{name}", token,
                      json={"replicas": spec["replicas"]})
    elif kind == "dep_delete":
        r = cloud.api("DELETE", f"/deployments/{name}", token)
    elif kind == "job_create":
        r = cloud.api("POST", "/jobs", token, json={
            "name": name, "command": ["train"], "shape": "gpu.h100", **spec})
    elif kind == "job_stop":
        r = cloud.api("POST", f"/jobs/{name}/stop", token)
    else:
        r = cloud.api("DELETE", f"/jobs/{name}", token)
    ws = "team" if token else "default"
    return Answer(kind, f"{ws}/{name}", r.status_code, t0, time.monotonic())


def _random_calls(rng: random.Random, cloud: Cloud, tok: str) -> list[Callable[[], Answer]]:
    """One thread's part of a round: the life of two random workloads (create, then scale
    or stop, then delete), with short random pauses, so the calls of all threads
    interleave with each other and with the reconcilers' passes."""
    out: list[Callable[[], Answer]] = []
    for _ in range(OPS_PER_THREAD // 3):
        token = rng.choice((tok, None))  # the team (small quota) or the operator workspace
        common = {"priority": rng.choice((0, 0, 10)), "preemptible": rng.random() < 0.5}
        if rng.random() < 0.5:
            name = rng.choice(DEPLOYMENTS)
            steps = [("dep_create", {"replicas": rng.choice((1, 1, 2)), **common}),
                     ("dep_scale", {"replicas": rng.choice((0, 1, 2))}),
                     ("dep_delete", {})]
        else:
            name = rng.choice(JOBS)
            steps = [("job_create", {"workers": rng.choice((1, 1, 2)), **common}),
                     ("job_stop", {}), ("job_delete", {})]
        for kind, spec in steps:
            pause = rng.uniform(0.0, 0.01)

            def call(kind: str = kind, spec: dict[str, Any] = spec, name: str = name,
                     token: str | None = token, pause: float = pause) -> Answer:
                time.sleep(pause)
                return _call(cloud, kind, name, token, spec)

            out.append(call)
    return out


def _expectations(cloud: Cloud, tok: str, answers: list[Answer], tally: Tally,
                  round_no: int) -> None:
    """What the API's answers promise, checked once the round has settled: a deployment
    whose DELETE answered 204 is gone, a job whose stop answered 200 is finished (unless
    the name was created anew after)."""
    created = [a for a in answers if a.op.endswith("create") and a.status == 201]
    for a in answers:
        if (a.op, a.status) not in (("dep_delete", 204), ("job_stop", 200)):
            continue
        family = a.op.split("_")[0]
        if any(c.op.startswith(family) and c.name == a.name and c.answered > a.started
               for c in created):
            continue
        ws, name = a.name.split("/")
        token = tok if ws == "team" else None
        if family == "dep":
            r = cloud.api("GET", f"/deployments/{name}", token)
            if r.status_code != 404:
                tally.add("deleted_but_alive", f"{round_no}:{a.name}",
                          f"deployment {a.name} is {r.json()['status']} after DELETE 204")
        else:
            r = cloud.api("GET", f"/jobs/{name}", token)
            if r.status_code == 200 and r.json()["status"] not in ("stopped", "failed",
                                                                   "succeeded"):
                tally.add("stop_lost", f"{round_no}:{a.name}",
                          f"job {a.name} is {r.json()['status']} after its stop answered 200")


def _slow_backend(cloud: Cloud, rng: random.Random) -> None:
    """Give the simulated processes the start and stop latency of real ones (1..8 ms),
    which is when calls land between a reconciler's decision and its action."""
    fake: Any = cloud.fake
    start, stop = fake.start, fake.stop
    lock = threading.Lock()

    def pause() -> None:
        with lock:
            delay = rng.uniform(0.001, 0.008)
        time.sleep(delay)

    def slow_start(spec: Any) -> Any:
        pause()
        return start(spec)

    def slow_stop(handle: Any, *, grace_s: float) -> Any:
        pause()
        return stop(handle, grace_s=grace_s)

    fake.start, fake.stop = slow_start, slow_stop


def _rounds(cloud: Cloud, rounds: int, seed: int) -> tuple[Tally, int]:
    _slow_backend(cloud, random.Random(seed + 1))
    cloud.add_fake_node("gpu-a", gpus=H100x2)
    cloud.add_fake_node("gpu-b", gpus=H100x2)
    tok = cloud.new_workspace("team")
    assert cloud.api("PUT", "/workspaces/team/quota",
                     json={"gpus_total": 1}).status_code == 200
    rng = random.Random(seed)
    tally = Tally()
    samples = 0
    for round_no in range(rounds):
        calls = [_random_calls(rng, cloud, tok) for _ in range(THREADS)]
        barrier = threading.Barrier(THREADS)
        answers: list[Answer] = []
        lock = threading.Lock()

        def worker(mine: list[Callable[[], Answer]], barrier: threading.Barrier = barrier,
                   lock: threading.Lock = lock, answers: list[Answer] = answers) -> None:
            barrier.wait()
            for call in mine:
                a = call()
                with lock:
                    answers.append(a)

        with Sampler(cloud, tally) as sampler, ReconcilerLoop(cloud) as loop:
            threads = [threading.Thread(target=worker, args=(c,)) for c in calls]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert not loop.errors, loop.errors
        samples += sampler.samples
        tally.ops += len(answers)
        for a in answers:
            if a.status >= 500:
                tally.add("http_5xx", f"{round_no}:{a.op}:{a.name}:{a.started}",
                          f"{a.op} {a.name} answered {a.status}")
        _pass(cloud, 4)  # settle
        report = check_database(cloud.app.state.db, cloud.app.state.backends)
        for v in report.violations:
            tally.add(str(v.invariant), v.object_id, v.message)
        _expectations(cloud, tok, answers, tally, round_no)
    return tally, samples


def test_random_concurrent_calls_keep_every_invariant(cloud: Cloud) -> None:
    tally, samples = _rounds(cloud, ROUNDS, SEED)
    figures = (f"rounds={ROUNDS} operations={tally.ops} samples={samples} "
               f"violations={sum(tally.violations.values())} {dict(tally.violations)}")
    print(f"\nconcurrency: {figures}")
    assert not tally.violations, figures + "\n" + "\n".join(tally.examples)


@pytest.fixture(autouse=True)
def _quiet_reconciler_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The reconcilers log each step that lost a race (and is retried); keep the output
    readable."""
    caplog.set_level("CRITICAL", logger="neocloud.server.reconcilers")
    yield
