"""Placement never waits for metering (two reconciler threads), and what an API write asks
for is acted on first, in the middle of a pass over a settled fleet (the changed-first
path of the deployment reconciler), with the routes of what changed rebuilt alone.
Both databases."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.db.tables import Deployment, Replica
from neocloud.server.metering.loop import MeteringLoop
from neocloud.server.reconcilers.deployments import changes
from tests.server.helpers import Cloud, make_settings

WAIT_S = 30.0
"""Longest wait for the threads (a deadline, not a timing assertion)."""


def _ids(cloud: Cloud, *names: str) -> list[str]:
    with cloud.app.state.db.session() as s:
        by_name = {row.name: row.id for row in s.execute(select(Deployment.name, Deployment.id))}
    return [by_name[n] for n in names]


def _deploy(cloud: Cloud, *names: str, priority: int = 0) -> None:
    """Create a one-replica ``cpu.small`` embeddings deployment per name (201 each)."""
    for name in names:
        r = cloud.api("POST", "/deployments", json={
            "name": name, "service": "embeddings", "shape": "cpu.small", "replicas": 1,
            "priority": priority})
        assert r.status_code == 201, r.text


def _ready(cloud: Cloud, name: str) -> int:
    return int(cloud.api("GET", f"/deployments/{name}").json()["ready_replicas"])


@pytest.fixture
def blocked_metering(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The metering loop's step blocks until ``release`` is set; ``entered`` is set when
    it first runs, ``threads`` names the threads it ran in."""
    state: dict[str, Any] = {"entered": threading.Event(), "release": threading.Event(),
                             "threads": [], "calls": 0}

    def slow(_self: MeteringLoop, now: Any = None) -> None:
        state["calls"] += 1
        state["threads"].append(threading.current_thread().name)
        state["entered"].set()
        state["release"].wait(60)

    monkeypatch.setattr(MeteringLoop, "run_once", slow)
    yield state
    state["release"].set()


def test_a_blocked_metering_step_does_not_delay_placement(
        tmp_path: Path, db_url: str, blocked_metering: dict[str, Any]) -> None:
    fake = FakeBackend()
    app = create_app(make_settings(tmp_path / "home", db_url), backends={"fake": fake})
    with TestClient(app, raise_server_exceptions=False) as client:
        try:
            h = {"Authorization": f"Bearer {bootstrap(app.state.db).token}"}
            assert blocked_metering["entered"].wait(WAIT_S), "the metering step never ran"
            r = client.post("/api/v1/nodes", headers=h, json={
                "name": "n1", "cpu_milli": 64000, "memory_mib": 262144, "gpus": [],
                "backend": "fake"})
            assert r.status_code == 201, r.text
            r = client.post("/api/v1/deployments", headers=h, json={
                "name": "emb", "service": "embeddings", "shape": "cpu.small", "replicas": 2})
            assert r.status_code == 201, r.text
            thread = app.state.reconcilers.thread
            passes = thread.passes
            deadline = time.monotonic() + WAIT_S
            ready = 0
            while time.monotonic() < deadline and ready < 2:
                ready = client.get("/api/v1/deployments/emb",
                                   headers=h).json()["ready_replicas"]
                time.sleep(0.05)
            while time.monotonic() < deadline and thread.passes <= passes + 1:
                time.sleep(0.05)
            # placed and ready, pass after pass, while the metering step is still blocked in
            # its own thread
            assert ready == 2
            assert not blocked_metering["release"].is_set() and blocked_metering["calls"] == 1
            assert blocked_metering["threads"] == ["neocloud-metering"]
            assert thread.name == "neocloud-reconciler" and thread.passes > passes + 1
        finally:  # a failed assertion's shutdown must not wait for the blocked step
            blocked_metering["release"].set()
    # shutdown: both threads stopped before the last usage flush and the database's close
    thread = app.state.reconcilers.thread
    assert not thread._thread.is_alive()
    metering = app.state.reconcilers.metering
    assert metering is not None and not metering._thread.is_alive()


def test_a_change_mid_pass_is_acted_on_before_the_rest_of_the_pass(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """A create and a scale that land during the health checks of a settled fleet are
    run by the changed-first path before the next settled deployment's checks, in the
    same pass; the settled check of the scaled deployment is left to its full step."""
    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    cloud.add_fake_node("n1")
    _deploy(cloud, "a1", "a2", "a3")
    cloud.reconcile(2)
    assert [_ready(cloud, n) for n in ("a1", "a2", "a3")] == [1, 1, 1]
    rec = cloud.app.state.reconcilers.deployments
    a1, a2, a3 = _ids(cloud, "a1", "a2", "a3")
    with cloud.app.state.db.session() as s:
        rep_of = {r.id: r.deployment_id for r in s.scalars(select(Replica))}
    order: list[str] = []
    check_ready = rec._check_ready
    reconcile = rec._reconcile

    in_step: list[str] = []

    def checked(rid: str, known: Any = None) -> bool:
        if in_step:  # a full step's own health checks
            return check_ready(rid, known=known)
        order.append(f"check {rep_of.get(rid, '?')}")
        if len(order) == 1:  # the writes land while the pass checks the settled fleet
            assert cloud.api("POST", "/deployments", json={
                "name": "new", "service": "embeddings", "shape": "cpu.small",
                "replicas": 1}).status_code == 201
            assert cloud.api("PATCH", "/deployments/a2",
                             json={"replicas": 2}).status_code == 200
        return check_ready(rid, known=known)

    def step(dep_id: str, **kw: Any) -> None:
        order.append(f"step {dep_id}")
        in_step.append(dep_id)
        try:
            reconcile(dep_id, **kw)
        finally:
            in_step.pop()

    monkeypatch.setattr(rec, "_check_ready", checked)
    monkeypatch.setattr(rec, "_reconcile", step)
    cloud.reconcile()
    (new,) = _ids(cloud, "new")
    # one pass: the new deployment and the scale-up are done
    assert _ready(cloud, "new") == 1 and _ready(cloud, "a2") == 2
    assert rec.changed_first_runs[-1] == [a2, new]  # by priority, then age
    # right after the first settled deployment's check, before the other ones'; a2's
    # settled check left out when not done yet (its full step checked it)
    first = order[0]
    # (their steps run on the pass's workers, at once on PostgreSQL: in either order)
    assert sorted(order[1:3]) == sorted([f"step {a2}", f"step {new}"])
    rest = {f"check {d}" for d in (a1, a2, a3)} - {first, f"check {a2}"}
    assert set(order[3:]) == rest and len(order) == 3 + len(rest)
    # the routes rebuilt after it: the changed deployments' alone
    routes = cloud.app.state.routes
    assert 2 in routes.refreshes
    with cloud.app.state.db.session() as s:
        row = s.get(Deployment, new)
        assert row is not None
        ws_id = row.workspace_id
    assert asyncio.run(routes.list_routes(ws_id))
    assert routes._routes[ws_id]["new"].deployment_id == new


def test_the_changed_first_path_misses_no_change_of_the_replicas_asked_for(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kind of write to a settled deployment that asks for other replicas reads as
    changed: a scale, an update (a new generation), a delete; an unchanged one does not,
    nor a spec change that asks for no replica (a drain timeout, a priority), which the
    next full pass acts on, reading its replicas again; nothing runs before the first
    full pass (every deployment would read as new)."""
    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    cloud.add_fake_node("n1")
    rec = cloud.app.state.reconcilers.deployments
    assert rec._changed_first(skip=set()) == set()  # no full pass yet
    names = ("d", "s", "u", "x", "quiet")
    _deploy(cloud, *names)
    cloud.reconcile(2)
    rec.wake()
    assert rec._changed_first(skip=set()) == set()  # the passes' own status writes: none
    ids = dict(zip(names, _ids(cloud, *names), strict=True))
    assert {ids["d"], ids["quiet"]} <= rec._kept.keys()  # settled, kept between passes
    _write_each_kind(cloud)
    ran = rec._changed_first(skip=set())
    assert ran == {ids["s"], ids["u"], ids["x"]}
    assert rec._changed_first(skip=set()) == set()  # not woken since: no look
    rec.wake()
    assert rec._changed_first(skip=set()) == set()  # what ran is unchanged since
    rec.run_once()  # the drain timeout and the priority: read again by the next pass
    with cloud.app.state.db.session() as s:
        revision = {row.id: row.revision for row in s.execute(
            select(Deployment.id, Deployment.revision))}
    for name in ("d", "quiet"):
        assert rec._kept[ids[name]].key[4] == revision[ids[name]] == 2


def test_a_spec_change_that_asks_for_no_replica_runs_no_step_ahead_of_a_new_deployment(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failing input (the fleet benchmark at 5,000 deployments): the steady writer's
    changes of the drain timeout each ran a full step in the next look; those that piled
    up during the burst's last look (1,496) all ran in the look after it, and a
    deployment created meanwhile was ready 23 s later. A look now runs the new
    deployment alone; the deployments whose drain timeout changed get their health
    checks from the next full pass, no full step, and stay ready."""
    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    cloud.add_fake_node("n1")
    names = tuple(f"w{i}" for i in range(5))
    _deploy(cloud, *names)
    cloud.reconcile(2)
    rec = cloud.app.state.reconcilers.deployments
    patched = _ids(cloud, *names)
    for name in names:
        assert cloud.api("PATCH", f"/deployments/{name}", json={"drain_timeout_s": 90.0}
                         ).status_code == 200
    _deploy(cloud, "new")
    (new,) = _ids(cloud, "new")
    steps: list[str] = []
    checked: list[str] = []
    reconcile, check_ready = rec._reconcile, rec._check_ready

    def step(dep_id: str, **kw: Any) -> None:
        steps.append(dep_id)
        reconcile(dep_id, **kw)

    def check(rid: str, known: Any = None) -> bool:
        checked.append(rid)
        return check_ready(rid, known=known)

    monkeypatch.setattr(rec, "_reconcile", step)
    monkeypatch.setattr(rec, "_check_ready", check)
    rec.wake()
    assert rec._changed_first(skip=set()) == {new}
    assert steps == [new] and _ready(cloud, "new") == 1
    steps.clear()
    checked.clear()
    rec.run_once()
    assert steps == []  # every deployment settled: health checks only
    with cloud.app.state.db.session() as s:
        replicas = {r.id: r.deployment_id for r in s.scalars(select(Replica))}
    assert sorted(replicas[rid] for rid in checked) == sorted([*patched, new])
    assert [_ready(cloud, n) for n in names] == [1] * len(names)
    assert {*patched, new} <= rec._kept.keys()


def test_the_threads_step_between_full_passes_is_a_look(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failing input (the fleet benchmark's steady phase at 5,000 deployments): every
    wake of the reconciler thread started a full pass, so a writer's stream of requests
    kept the passes back to back, each with the health checks of every replica. The
    thread's deployment step now runs a full pass when none started for the reconcile
    interval, and a look when woken in between: a deployment created then is run by
    it, with no pass (no settled read, no health check); not woken and not due,
    nothing; once the interval is over, a full pass again."""
    cloud.add_fake_node("n1")
    _deploy(cloud, "a", "b")
    cloud.reconcile(2)
    rec = cloud.app.state.reconcilers.deployments
    (_nodes, step, *_rest) = cloud.app.state.reconcilers.thread.steps
    a, b = _ids(cloud, "a", "b")
    reads: list[int] = []
    checked: list[str] = []
    steps: list[str] = []
    settled, check_ready, reconcile = rec._settled, rec._check_ready, rec._reconcile

    def read(s: Any, rows: Any = None) -> Any:
        reads.append(1)
        return settled(s, rows)

    def check(rid: str, known: Any = None) -> bool:
        checked.append(rid)
        return check_ready(rid, known=known)

    def full_step(dep_id: str, **kw: Any) -> None:
        steps.append(dep_id)
        reconcile(dep_id, **kw)

    monkeypatch.setattr(rec, "_settled", read)
    monkeypatch.setattr(rec, "_check_ready", check)
    monkeypatch.setattr(rec, "_reconcile", full_step)
    monkeypatch.setattr(rec.settings, "reconcile_interval_s", 3600.0)
    step()  # not woken since the pass, none due: nothing
    assert (reads, checked, steps) == ([], [], [])
    assert cloud.api("PATCH", "/deployments/a", json={"drain_timeout_s": 90.0}
                     ).status_code == 200
    _deploy(cloud, "new")  # each request wakes the thread
    (new,) = _ids(cloud, "new")
    step()
    assert reads == [] and steps == [new] and _ready(cloud, "new") == 1
    with cloud.app.state.db.session() as s:
        mine = {r.id for r in s.scalars(select(Replica).where(Replica.deployment_id == new))}
    assert set(checked) <= mine  # the new deployment's own step only
    monkeypatch.setattr(rec.settings, "reconcile_interval_s", 0.0)
    checked.clear()
    step()  # due: a full pass, the change of a's drain timeout read again by it
    assert reads == [1]
    with cloud.app.state.db.session() as s:
        of = {r.id: r.deployment_id for r in s.scalars(select(Replica))}
    assert sorted(of[rid] for rid in checked) == sorted([a, b, new])
    assert rec._kept[a].key[4] == 2


def _watched_sampler(cloud: Cloud, monkeypatch: pytest.MonkeyPatch, *, fail_first: bool
                     ) -> tuple[list[datetime], MeteringLoop, datetime]:
    """A metering loop on one fake node whose node sample records the time of each call
    (the first one raising when ``fail_first``), and the start of the current 10-second
    bucket: ``(calls, loop, t0)``."""
    from neocloud.server.services import metrics_history

    calls: list[datetime] = []
    sample = metrics_history.sample_nodes

    def watched(s: Any, now: datetime) -> int:
        calls.append(now)
        if fail_first and len(calls) == 1:
            raise RuntimeError("database went away")
        return sample(s, now)

    monkeypatch.setattr(metrics_history, "sample_nodes", watched)
    cloud.add_fake_node("n1")
    loop = MeteringLoop(cloud.app.state.db, usage_period_s=3600.0)
    return calls, loop, datetime.fromtimestamp(int(time.time()) // 10 * 10, UTC)


def test_the_metering_loop_samples_the_nodes_once_per_bucket(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node sample reads every node and allocation even for a bucket already taken,
    so the loop, now on its own thread and period, asks once per 10-second bucket."""
    calls, loop, t0 = _watched_sampler(cloud, monkeypatch, fail_first=False)
    loop.run_once(t0)
    loop.run_once(t0 + timedelta(seconds=9))
    assert calls == [t0]
    loop.run_once(t0 + timedelta(seconds=10))
    assert calls == [t0, t0 + timedelta(seconds=10)]


def test_a_failed_node_sample_is_asked_for_again_in_its_bucket(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop marks a bucket sampled only once its sample committed: a sample that
    failed is taken by the next run of the same bucket (it was skipped until the next
    bucket, a gap in every node's history), then not asked for again."""
    from neocloud.server.db.tables import MetricPoint

    calls, loop, t0 = _watched_sampler(cloud, monkeypatch, fail_first=True)
    loop.run_once(t0)
    loop.run_once(t0 + timedelta(seconds=3))
    loop.run_once(t0 + timedelta(seconds=6))
    assert calls == [t0, t0 + timedelta(seconds=3)]
    with cloud.app.state.db.session() as s:
        fine = s.scalars(select(MetricPoint.samples).where(
            MetricPoint.series == "node", MetricPoint.resolution_s == 10)).all()
    assert fine == [1]


def test_a_look_leaves_what_the_pass_itself_moved(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """The statuses a pass writes (pending -> starting -> ready) are not changes to act
    on: a woken look right after the pass runs nothing (it ran every deployment the pass
    had just moved a second time), and then only what a request changed."""
    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    cloud.add_fake_node("n1")
    _deploy(cloud, "p", "q")
    rec = cloud.app.state.reconcilers.deployments
    cloud.reconcile()  # reads both pending, leaves them starting or ready
    with cloud.app.state.db.session() as s:
        statuses = set(s.scalars(select(Deployment.status)))
    assert statuses and "pending" not in statuses
    rec.wake()
    assert rec._changed_first(skip=set()) == set()
    (q,) = _ids(cloud, "q")
    assert cloud.api("PATCH", "/deployments/q", json={"replicas": 2}).status_code == 200
    assert rec._changed_first(skip=set()) == {q}


def test_a_deployment_gone_before_its_look_runs_it_is_passed_over(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment deleted after a look read it as changed (another control-plane copy
    finished its delete) is skipped by its step; the look goes on with the others and
    the route table drops it."""
    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    cloud.add_fake_node("n1")
    _deploy(cloud, "gone", "kept")
    cloud.reconcile(2)
    rec = cloud.app.state.reconcilers.deployments
    gone, kept = _ids(cloud, "gone", "kept")
    for name in ("gone", "kept"):
        assert cloud.api("PATCH", f"/deployments/{name}",
                         json={"replicas": 2}).status_code == 200
    reconcile = rec._reconcile

    def vanish_first(dep_id: str, **kw: Any) -> None:
        if dep_id == gone:
            with cloud.app.state.db.session() as s:
                for r in s.scalars(select(Replica).where(Replica.deployment_id == gone)):
                    s.delete(r)
                row = s.get(Deployment, gone)
                assert row is not None
                s.delete(row)
        reconcile(dep_id, **kw)

    monkeypatch.setattr(rec, "_reconcile", vanish_first)
    assert rec._changed_first(skip=set()) == {gone, kept}
    assert _ready(cloud, "kept") == 2
    routes = cloud.app.state.routes
    assert {r.deployment_id for ws in routes._routes.values() for r in ws.values()} == {kept}


def test_a_deployment_asked_for_during_a_long_group_runs_before_the_group_ends(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass's priority group (here six new deployments; at full size thousands, all due
    for metering) is run in chunks of ``LOOK_EVERY`` with a look between them: a
    deployment created while the first chunk runs is run by the next look, before the
    group's last chunk, and one of lower priority than the group's waiting deployments is
    left to the pass."""
    from neocloud.server.reconcilers.deployments import reconciler

    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    monkeypatch.setattr(reconciler, "LOOK_EVERY", 2)
    cloud.add_fake_node("n1")
    rec = cloud.app.state.reconcilers.deployments
    rec.run_once()  # a first pass (looks start after one)
    names = [f"g{i}" for i in range(6)]
    _deploy(cloud, *names)  # six waiting deployments of priority 0: the next pass's group
    ids = _ids(cloud, *names)
    order: list[str] = []
    reconcile = rec._reconcile

    def step(dep_id: str, **kw: Any) -> None:
        order.append(dep_id)
        if len(order) == 1:  # asked for while the group's first chunk runs
            _deploy(cloud, "late")
            _deploy(cloud, "low", priority=-5)
        reconcile(dep_id, **kw)

    monkeypatch.setattr(rec, "_reconcile", step)
    rec.wake()
    rec.run_once()
    late, low = _ids(cloud, "late", "low")
    assert late in order and low not in order  # low waits for the next pass
    assert rec.changed_first_runs[-1] == [late]
    # after the first chunk's steps, before the last chunk's
    assert order.index(late) < min(order.index(d) for d in ids[4:])
    assert sorted(d for d in order if d != late) == sorted(ids)  # each once
    rec.run_once()
    assert _ready(cloud, "late") == 1 and _ready(cloud, "low") == 1


def _spy_looks(rec: Any, monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """The ids each look of ``rec`` read (one set per look, in order)."""
    reads: list[set[str]] = []
    look_rows = rec._look_rows

    def spied() -> list[Any]:
        rows = look_rows()
        reads.append({row.id for row in rows})
        return list(rows)

    monkeypatch.setattr(rec, "_look_rows", spied)
    return reads


def test_a_look_on_a_settled_fleet_reads_only_the_deployments_written_since(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failing input (the fleet benchmark at 5,000 deployments): every look read the key
    columns of every deployment. On a settled fleet a look now reads the deployments
    written since the previous read (the margin set to zero here, so the fleet's own
    writes of a moment ago lie before it), and still runs the one written."""
    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    monkeypatch.setattr(changes, "LOOK_MARGIN_S", 0.0)
    cloud.add_fake_node("n1")
    names = [f"s{i}" for i in range(6)]
    _deploy(cloud, *names)
    cloud.reconcile(2)
    rec = cloud.app.state.reconcilers.deployments
    reads = _spy_looks(rec, monkeypatch)
    rec.run_once()  # the read the next look starts from
    rec.wake()
    assert rec._changed_first(skip=set()) == set()
    assert reads == [set()]  # nothing written since the pass's read
    (s3,) = _ids(cloud, "s3")
    assert cloud.api("PATCH", "/deployments/s3", json={"replicas": 2}).status_code == 200
    assert rec._changed_first(skip=set()) == {s3}
    assert reads[-1] == {s3}
    assert _ready(cloud, "s3") == 2


def _waiting_big(cloud: Cloud) -> None:
    """``low`` (priority 0) ready on a CPU node, ``big`` (priority 10) waiting for a GPU."""
    cloud.add_fake_node("n1", cpu_milli=4000, memory_mib=16384)
    _deploy(cloud, "low")
    r = cloud.api("POST", "/deployments", json={
        "name": "big", "service": "embeddings", "shape": "gpu.h100", "replicas": 1,
        "priority": 10})
    assert r.status_code == 201, r.text
    cloud.reconcile(2)
    assert cloud.api("GET", "/deployments/big").json()["status"] != "ready"


def test_a_look_reads_what_waits_so_priorities_are_kept(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment that waits (no room: ``pending`` with a reason) is read by every look
    however old its last write: a higher-priority one that waits keeps a lower-priority
    write for the full pass, which runs the priorities in order."""
    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    monkeypatch.setattr(changes, "LOOK_MARGIN_S", 0.0)
    _waiting_big(cloud)
    big, low = _ids(cloud, "big", "low")
    rec = cloud.app.state.reconcilers.deployments
    reads = _spy_looks(rec, monkeypatch)
    rec.run_once()
    assert cloud.api("PATCH", "/deployments/low", json={"replicas": 2}).status_code == 200
    rec.wake()
    assert rec._changed_first(skip=set()) == set()  # left to the pass: big waits
    assert reads[-1] == {big, low}
    rec.run_once()
    assert _ready(cloud, "low") == 2


def test_a_write_that_commits_after_a_look_read_is_seen_within_the_margin(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request's transaction sets ``updated_at``, then commits: one that commits after a
    look's read but set it before that read (up to ``LOOK_MARGIN_S`` earlier) is read by
    the next look; one older than the margin is left to the next full pass (the
    resync), which acts on it."""
    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    cloud.add_fake_node("n1")
    _deploy(cloud, "late", "later")
    cloud.reconcile(2)
    rec = cloud.app.state.reconcilers.deployments
    reads = _spy_looks(rec, monkeypatch)
    rec.run_once()
    late, later = _ids(cloud, "late", "later")
    read_at = rec._read_at
    assert read_at is not None
    margin = changes.LOOK_MARGIN_S
    with cloud.app.state.db.session() as s:  # as the slow transactions commit them
        for dep_id, before_s in ((late, margin / 2), (later, margin * 4)):
            row = s.get(Deployment, dep_id)
            assert row is not None
            row.replicas, row.revision = 2, row.revision + 1
            row.updated_at = read_at - timedelta(seconds=before_s)
    rec.wake()
    assert rec._changed_first(skip=set()) == {late}
    assert later not in reads[-1]
    assert _ready(cloud, "late") == 2 and _ready(cloud, "later") == 1
    rec.run_once()
    assert _ready(cloud, "later") == 2


def test_every_kind_of_request_sets_updated_at_so_a_look_reads_it(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """The invariant a look's read rests on (``changes``): every request that changes
    what a deployment asks for sets its ``updated_at`` to its own time. With no margin
    at all, each kind (a spec field, a scale, a new generation, a priority, a delete, a
    wake from zero, a create) is still read by the next look, and run by it when it
    asks for other replicas (all but the spec field and the priority)."""
    from neocloud.server.services import deployments as deployment_svc

    monkeypatch.setattr(changes, "CHANGED_EVERY_S", 0.0)
    monkeypatch.setattr(changes, "LOOK_MARGIN_S", 0.0)
    cloud.add_fake_node("n1")
    names = ("d", "s", "u", "x", "quiet", "zero")
    _deploy(cloud, *names[:-1])
    r = cloud.api("POST", "/deployments", json={
        "name": "zero", "service": "embeddings", "shape": "cpu.small", "replicas": 0,
        "autoscaling": {"min_replicas": 0, "max_replicas": 2}})
    assert r.status_code == 201, r.text
    cloud.reconcile(2)
    rec = cloud.app.state.reconcilers.deployments
    reads = _spy_looks(rec, monkeypatch)
    rec.run_once()
    ids = dict(zip(names, _ids(cloud, *names), strict=True))
    with cloud.app.state.db.session() as s:
        before = {row.id: row.updated_at for row in s.execute(
            select(Deployment.id, Deployment.updated_at))}
    _write_each_kind(cloud)
    with cloud.app.state.db.session() as s:
        assert deployment_svc.wake(s, deployment_id=ids["zero"])
    _deploy(cloud, "new")
    (new,) = _ids(cloud, "new")
    with cloud.app.state.db.session() as s:
        after = {row.id: row.updated_at for row in s.execute(
            select(Deployment.id, Deployment.updated_at))}
    assert all(after[i] > before[i] for i in ids.values())
    rec.wake()
    assert rec._changed_first(skip=set()) == {*(ids[n] for n in ("s", "u", "x", "zero")),
                                              new}
    assert reads[-1] == {*ids.values(), new}


def _write_each_kind(cloud: Any) -> None:
    """One request of each kind that changes what a deployment asks for, on the
    deployments ``d`` (drain timeout), ``s`` (scale), ``u`` (env: a new revision), ``x``
    (delete) and ``quiet`` (priority)."""
    assert cloud.api("PATCH", "/deployments/d", json={"drain_timeout_s": 77.0}
                     ).status_code == 200
    assert cloud.api("PATCH", "/deployments/s", json={"replicas": 2}).status_code == 200
    assert cloud.api("PATCH", "/deployments/u", json={"env": {"A": "1"}}
                     ).status_code == 200
    assert cloud.api("DELETE", "/deployments/x").status_code in (200, 202, 204)
    assert cloud.api("PATCH", "/deployments/quiet", json={"priority": 5}).status_code == 200
