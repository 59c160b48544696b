"""The reconciler core on a real database (both): status changes, row locks, placement
that cannot outlive its owner, starts that a stop overtakes, pods on simulated nodes, and
the invariant checker behind ``GET /api/v1/admin/check`` and ``neocloud admin check``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from neocloud.cli.context import CliState
from neocloud.cli.main import app as cli_app
from neocloud.models.deployments import DeploymentStatus, ReplicaStatus
from neocloud.models.jobs import JobStatus
from neocloud.server.backends.base import WorkloadSpec
from neocloud.server.db.tables import Allocation, Deployment, Event, Job, Replica
from neocloud.server.invariants import check_database
from neocloud.server.reconcilers.core import (
    IllegalTransition,
    StaleStatus,
    lock_row,
    set_status,
    set_statuses,
    start_process,
)
from tests.server.helpers import Cloud
from tests.server.test_fleet_scale import statements

H100x2 = [{"type": "H100", "count": 2, "memory_mib": 81559}]


def _pass(cloud: Cloud, times: int = 1) -> None:
    for _ in range(times):
        cloud.app.state.reconcilers.run_once()


def _deployment(cloud: Cloud, name: str = "m", **spec: Any) -> Deployment:
    r = cloud.api("POST", "/deployments", json={"name": name, "service": "chat",
                                                "shape": "gpu.h100", **spec})
    assert r.status_code == 201, r.text
    with cloud.app.state.db.session() as s:
        return s.scalars(select(Deployment).where(Deployment.name == name)).one()


# -- set_status ----------------------------------------------------------------------


def test_set_status_records_the_event_naming_the_status(cloud: Cloud) -> None:
    dep = _deployment(cloud, replicas=0)
    with cloud.app.state.db.session() as s:
        row = s.get(Deployment, dep.id)
        assert set_status(s, row, DeploymentStatus.pending, reason="StatusChanged",
                          message="scaled_to_zero -> pending")
        assert not set_status(s, row, DeploymentStatus.pending)  # no change, no event
    with cloud.app.state.db.session() as s:
        assert s.get(Deployment, dep.id).status == "pending"
        evs = list(s.scalars(select(Event).where(Event.object_id == dep.id,
                                                 Event.status.is_not(None))))
        assert [(e.reason, e.status) for e in evs] == [("StatusChanged", "pending")]


def test_set_status_refuses_what_the_transitions_do_not_allow(cloud: Cloud) -> None:
    dep = _deployment(cloud, replicas=0)
    with cloud.app.state.db.session() as s:
        row = s.get(Deployment, dep.id)
        set_status(s, row, DeploymentStatus.deleting)
    with cloud.app.state.db.session() as s:
        row = s.get(Deployment, dep.id)
        with pytest.raises(IllegalTransition):
            set_status(s, row, DeploymentStatus.ready)  # nothing follows deleting


def test_set_status_is_a_compare_and_set(cloud: Cloud) -> None:
    """A status written by someone else after this session read the row is never
    overwritten: the write raises and the whole transaction rolls back."""
    dep = _deployment(cloud, replicas=0)
    db = cloud.app.state.db
    with pytest.raises(StaleStatus):
        with db.session() as s:
            stale = s.get(Deployment, dep.id)
            assert stale.status == "scaled_to_zero"
            with db.session() as other:  # a DELETE lands between the read and the write
                set_status(other, other.get(Deployment, dep.id), DeploymentStatus.deleting)
            stale.pending_reason = "must not be written"
            set_status(s, stale, DeploymentStatus.ready)
    with db.session() as s:
        row = s.get(Deployment, dep.id)
        assert row.status == "deleting" and row.pending_reason is None


def _replica_rows(cloud: Cloud, n: int) -> list[str]:
    """``n`` pending replica rows of a new deployment of ``n`` replicas (no pass run)."""
    dep = _deployment(cloud, replicas=0)
    db = cloud.app.state.db
    with db.session() as s:
        rows = [Replica(deployment_id=dep.id, workspace_id=dep.workspace_id,
                        generation=dep.generation, status="pending") for _ in range(n)]
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def test_set_statuses_moves_many_rows_in_one_statement_with_their_events(
        cloud: Cloud) -> None:
    ids = _replica_rows(cloud, 4)
    db = cloud.app.state.db
    with db.session() as s:
        rows = [s.get(Replica, rid) for rid in ids]
        with statements(db) as seen:
            n = set_statuses(s, rows, ReplicaStatus.starting, reason="Scheduled",
                             messages=[f"placed {i}" for i in range(4)])
        assert n == 4
        assert len([q for q in seen if q.startswith("UPDATE replicas")]) == 1
        assert set_statuses(s, rows, ReplicaStatus.starting) == 0  # no change, no event
    with db.session() as s:
        assert {s.get(Replica, rid).status for rid in ids} == {"starting"}
        evs = {e.object_id: (e.reason, e.message, e.status) for e in s.scalars(
            select(Event).where(Event.object_id.in_(ids)))}
        assert evs == {rid: ("Scheduled", f"placed {i}", "starting")
                       for i, rid in enumerate(ids)}


def test_set_statuses_is_a_compare_and_set_for_every_row(cloud: Cloud) -> None:
    """One row of the batch stopped by someone else after the read: nothing of the
    batch is written, its transaction rolls back."""
    ids = _replica_rows(cloud, 3)
    db = cloud.app.state.db
    with pytest.raises(StaleStatus):
        with db.session() as s:
            rows = [s.get(Replica, rid) for rid in ids]
            with db.session() as other:  # a stop lands between the read and the write
                set_status(other, other.get(Replica, ids[1]), ReplicaStatus.stopping)
            set_statuses(s, rows, ReplicaStatus.starting)
    with db.session() as s:
        assert [s.get(Replica, rid).status for rid in ids] == ["pending", "stopping",
                                                               "pending"]
        assert not list(s.scalars(select(Event).where(Event.object_id.in_(ids),
                                                      Event.status == "starting")))


def test_set_statuses_refuses_a_transition_not_allowed_before_writing(cloud: Cloud) -> None:
    ids = _replica_rows(cloud, 2)
    db = cloud.app.state.db
    with db.session() as s:
        rows = [s.get(Replica, rid) for rid in ids]
        set_status(s, rows[1], ReplicaStatus.stopping)
    with db.session() as s:
        rows = [s.get(Replica, rid) for rid in ids]
        with statements(db) as seen, pytest.raises(IllegalTransition):
            set_statuses(s, rows, ReplicaStatus.ready)  # pending -> ready is not allowed
        assert not [q for q in seen if q.startswith("UPDATE")]
        with pytest.raises(ValueError):
            set_statuses(s, rows, ReplicaStatus.stopping, messages=["one"])


def test_lock_row_reads_the_newest_row(cloud: Cloud) -> None:
    dep = _deployment(cloud, replicas=0)
    db = cloud.app.state.db
    with db.session() as s:
        old = s.get(Deployment, dep.id)
        with db.session() as other:
            other.get(Deployment, dep.id).replicas = 5
        assert old.replicas == 0
        fresh = lock_row(s, Deployment, dep.id)
        assert fresh is old and fresh.replicas == 5
        assert lock_row(s, Deployment, "0" * 32) is None


# -- allocations belong to their owner -----------------------------------------------


def test_an_allocation_cannot_exist_without_its_owner(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=H100x2)
    _deployment(cloud, replicas=1)
    _pass(cloud, 2)
    db = cloud.app.state.db
    with db.session() as s:
        alloc = s.scalars(select(Allocation)).one()
        assert alloc.replica_id == alloc.owner_id and alloc.kind == "replica"
        node_id = alloc.node_id
    with pytest.raises(IntegrityError):
        with db.session() as s:
            s.add(Allocation(workspace_id="w", kind="replica", owner_id="f" * 32,
                             replica_id="f" * 32, node_id=node_id))
    with pytest.raises(IntegrityError):  # the owner column must match the kind
        with db.session() as s:
            s.add(Allocation(workspace_id="w", kind="job", owner_id="e" * 32,
                             node_id=node_id))
    with db.session() as s:  # deleting the owner deletes the allocation with it
        s.delete(s.scalars(select(Replica)).one())
    with db.session() as s:
        assert s.scalars(select(Allocation)).all() == []


def test_a_replica_of_a_deleting_deployment_is_never_placed(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=H100x2)
    dep = _deployment(cloud, replicas=1)
    rec = cloud.app.state.reconcilers.deployments
    with cloud.app.state.db.session() as s:  # a replica decided before the DELETE
        s.add(Replica(deployment_id=dep.id, workspace_id=dep.workspace_id,
                      generation=dep.generation, status="pending"))
    assert cloud.api("DELETE", "/deployments/m").status_code == 204
    with cloud.app.state.db.session() as s:
        rid = s.scalars(select(Replica.id)).one()
    rec._place_and_start(rid)
    with cloud.app.state.db.session() as s:
        assert s.scalars(select(Allocation)).all() == []
        assert s.get(Replica, rid).status == ReplicaStatus.pending
    assert cloud.fake.workload_ids() == []
    _pass(cloud, 2)
    assert cloud.api("GET", "/deployments/m").status_code == 404


def test_preemption_is_its_own_field(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=[{"type": "H100", "count": 1, "memory_mib": 81559}])
    cloud.api("POST", "/jobs", json={"name": "low", "command": ["x"], "shape": "gpu.h100",
                                     "preemptible": True})
    _pass(cloud, 2)
    cloud.api("POST", "/jobs", json={"name": "high", "command": ["x"], "shape": "gpu.h100",
                                     "priority": 10})
    cloud.app.state.reconcilers.jobs.run_once()
    with cloud.app.state.db.session() as s:
        high = s.scalars(select(Job).where(Job.name == "high")).one()
        assert high.status == "queued" and high.preempting_at is not None
        assert high.reason.startswith("preempting 1 lower-priority")
    _pass(cloud, 4)
    with cloud.app.state.db.session() as s:
        high = s.scalars(select(Job).where(Job.name == "high")).one()
        assert high.status == JobStatus.running and high.preempting_at is None
    assert check_database(cloud.app.state.db, cloud.app.state.backends).ok


# -- starts overtaken by a stop ------------------------------------------------------


def test_a_start_no_longer_wanted_when_recorded_is_stopped_at_once(cloud: Cloud) -> None:
    fake = cloud.fake
    spec = WorkloadSpec(workload_id="w1", command=["x"])
    seen: list[dict[str, Any]] = []

    def record(_s: Any, handle: dict[str, Any]) -> bool:
        seen.append(handle)
        return False  # a stop arrived while the process started

    handle = start_process(cloud.app.state.db, fake, spec, record=record, grace_s=0.1)
    assert seen == [handle]
    assert not fake.inspect(handle).running
    kept = start_process(cloud.app.state.db, fake, WorkloadSpec(workload_id="w2", command=[]),
                         record=lambda _s, _h: True, grace_s=0.1)
    assert fake.inspect(kept).running


def test_a_job_stopped_while_its_worker_starts_ends_stopped(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.add_fake_node("g1", gpus=H100x2)
    cloud.api("POST", "/jobs", json={"name": "t", "command": ["x"], "shape": "gpu.h100"})
    fake = cloud.fake
    start = fake.start

    def start_then_stop_lands(spec: WorkloadSpec) -> dict[str, Any]:
        handle = start(spec)
        assert cloud.api("POST", "/jobs/t/stop").status_code == 200
        return handle

    monkeypatch.setattr(fake, "start", start_then_stop_lands)
    cloud.app.state.reconcilers.jobs.run_once()
    # The process that was started is already stopped; the next pass writes the end.
    assert fake.workload_ids() == []
    _pass(cloud, 2)
    assert cloud.api("GET", "/jobs/t").json()["status"] == "stopped"
    assert check_database(cloud.app.state.db, cloud.app.state.backends).ok


# -- pods on simulated nodes ---------------------------------------------------------


@pytest.fixture
def pods_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pods on the fake backend need no sshd on this machine."""
    monkeypatch.setattr("neocloud.server.services.pods.find_sshd", lambda: "/usr/sbin/sshd")


def test_pod_life_on_a_simulated_node(cloud: Cloud, pods_anywhere: None) -> None:
    cloud.add_fake_node("g1", gpus=H100x2)
    r = cloud.api("POST", "/pods", json={"name": "dev", "shape": "gpu.h100"})
    assert r.status_code == 201, r.text
    _pass(cloud, 3)
    assert cloud.api("GET", "/pods/dev").json()["status"] == "running"
    assert len(cloud.fake.workload_ids()) == 1
    assert cloud.api("POST", "/pods/dev/stop").status_code == 200
    _pass(cloud, 2)
    assert cloud.api("GET", "/pods/dev").json()["status"] == "stopped"
    assert cloud.fake.workload_ids() == []
    assert cloud.api("POST", "/pods/dev/start").status_code == 200
    _pass(cloud, 3)
    assert cloud.api("GET", "/pods/dev").json()["status"] == "running"
    assert cloud.api("DELETE", "/pods/dev").status_code == 204
    _pass(cloud, 2)
    assert cloud.api("GET", "/pods/dev").status_code == 404
    report = check_database(cloud.app.state.db, cloud.app.state.backends)
    assert report.ok, report.violations
    assert report.counts["allocations"] == 0


def test_a_pod_stopped_while_it_is_placed_ends_stopped(
        cloud: Cloud, pods_anywhere: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop lands while the reconciler places the pod: either it waits for the
    placement's lock and then stops the placed pod, or the placement sees it; the pod
    ends stopped with no process and no allocation."""
    import threading

    from neocloud.server.services import placement

    cloud.add_fake_node("g1", gpus=H100x2)
    cloud.api("POST", "/pods", json={"name": "dev", "shape": "gpu.h100"})
    schedule = placement.schedule
    answers: list[int] = []

    def schedule_while_stop_lands(s: Any, **kw: Any) -> Any:
        if not answers:
            t = threading.Thread(target=lambda: answers.append(
                cloud.api("POST", "/pods/dev/stop").status_code))
            t.start()
            t.join(1.0)
        return schedule(s, **kw)

    monkeypatch.setattr(placement, "schedule", schedule_while_stop_lands)
    cloud.app.state.reconcilers.pods.run_once()
    for _ in range(100):
        if answers:
            break
        threading.Event().wait(0.05)
    assert answers == [200]
    _pass(cloud, 3)
    assert cloud.api("GET", "/pods/dev").json()["status"] == "stopped"
    assert cloud.fake.workload_ids() == []
    assert check_database(cloud.app.state.db, cloud.app.state.backends).ok


# -- the checker, the route and the CLI ----------------------------------------------


def test_admin_check_reports_a_broken_quota_and_repairs_nothing(cloud: Cloud) -> None:
    cloud.add_fake_node("g1", gpus=H100x2)
    tok = cloud.new_workspace("team")
    cloud.api("POST", "/deployments", tok, json={"name": "m", "service": "chat",
                                                 "shape": "gpu.h100", "replicas": 2})
    _pass(cloud, 2)
    ok = cloud.api("GET", "/admin/check")
    assert ok.status_code == 200, ok.text
    assert ok.json()["ok"] is True and ok.json()["violations"] == []
    assert ok.json()["counts"]["allocations"] == 2
    assert cloud.api("GET", "/admin/check", tok).status_code == 403  # operators only

    # An operator lowers the quota below what the workspace holds: reported, not repaired.
    assert cloud.api("PUT", "/workspaces/team/quota",
                     json={"gpus_total": 1}).status_code == 200
    body = cloud.api("GET", "/admin/check").json()
    assert body["ok"] is False
    assert [(v["invariant"], v["kind"]) for v in body["violations"]] == [("quota", "workspace")]
    assert "2/1 GPUs" in body["violations"][0]["message"]
    with cloud.app.state.db.session() as s:
        assert len(s.scalars(select(Allocation)).all()) == 2

    runner = CliRunner()

    class InProcess(httpx.BaseTransport):
        """The CLI's requests, sent to the real app in this process."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            got = cloud.client.request(request.method, str(request.url),
                                       headers=request.headers, content=request.read())
            return httpx.Response(got.status_code, headers=got.headers, content=got.content)

    def cli(*args: str) -> Any:
        state = CliState(transport=InProcess())
        state.url, state.token = "http://testserver", cloud.token
        return runner.invoke(cli_app, list(args), obj=state, catch_exceptions=False)

    res = cli("admin", "check", "--json")
    assert res.exit_code == 1 and res.stdout, (res.stdout, res.stderr)
    assert json.loads(res.stdout)["violations"][0]["invariant"] == "quota"
    res = cli("admin", "check")
    assert res.exit_code == 1 and "quota" in res.stdout
    cloud.api("PUT", "/workspaces/team/quota", json={"gpus_total": 2})
    res = cli("admin", "check")
    assert res.exit_code == 0 and res.stdout.startswith("ok: no invariant is broken")


def test_the_checker_finds_each_kind_of_broken_invariant(cloud: Cloud) -> None:
    """Each violation planted behind the core's back is reported, by name."""
    cloud.add_fake_node("g1", gpus=H100x2)
    dep = _deployment(cloud, replicas=2)
    _pass(cloud, 2)
    db = cloud.app.state.db
    with db.session() as s:
        a, b = s.scalars(select(Replica).order_by(Replica.id)).all()
        a.status = "stopped"  # stopped, yet holding its allocation and its process
        b_alloc = s.scalars(select(Allocation).where(Allocation.owner_id == b.id)).one()
        s.delete(b_alloc)  # ready without an allocation
        s.add(Event(workspace_id=dep.workspace_id, kind="deployment", name="m",
                    object_id=dep.id, reason="StatusChanged", message="x", status="pending"))
        stopped_id = a.id
        ready_id = b.id
    cloud.fake.start(WorkloadSpec(workload_id="gone", command=["x"]))  # nobody's process
    report = check_database(db, cloud.app.state.backends)
    found = {(v.invariant.value, v.object_id) for v in report.violations}
    with db.session() as s:
        alloc_of_a = s.scalars(select(Allocation.id).where(
            Allocation.owner_id == stopped_id)).one()
    assert found == {
        ("allocation_owner", alloc_of_a),
        ("allocation_missing", ready_id),
        ("not_wanted_running", stopped_id),
        ("not_wanted_running", "gone"),
        ("status_history", dep.id),
        ("status_history", stopped_id),  # its newest status event says ready
    }, report.violations
    assert not report.ok
    # Nothing was repaired.
    with db.session() as s:
        assert s.get(Replica, stopped_id).status == "stopped"
    assert "gone" in cloud.fake.workload_ids()
