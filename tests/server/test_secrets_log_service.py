"""The log service (:mod:`neocloud.server.services.logs`): logs come from the backend that
runs the workload (never from a file the router opens), with headers per process, tail,
the errors it documents, and secret values masked once more when read."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from neocloud.errors import NotFound
from neocloud.server.backends import FakeBackend
from neocloud.server.db.tables import Job, JobWorker, Replica
from neocloud.server.services import logs as log_svc
from tests.server.helpers import Cloud

VALUE = "model-secret-9f8e7d"


def replicas(cloud: Cloud) -> list[Replica]:
    with cloud.app.state.db.session() as s:
        return list(s.scalars(select(Replica).order_by(Replica.created_at)))


def deploy(cloud: Cloud, replicas_: int) -> None:
    cloud.add_fake_node("n1")
    assert cloud.api("PUT", "/secrets/model-key", json={"value": VALUE}).status_code == 201
    r = cloud.api("POST", "/deployments", json={
        "name": "d", "service": "embeddings", "replicas": replicas_,
        "secrets": {"MODEL_KEY": "model-key"}})
    assert r.status_code == 201, r.text
    cloud.reconcile(3)


def test_deployment_logs_per_replica_with_tail(cloud: Cloud) -> None:
    deploy(cloud, 2)
    reps = replicas(cloud)
    assert len(reps) == 2 and all(r.handle for r in reps)
    for i, r in enumerate(reps):
        cloud.fake.write(r.id, "".join(f"replica {i} line {k}\n" for k in range(5)))
    text = cloud.api("GET", "/deployments/d/logs", params={"tail": 2}).text
    for i, r in enumerate(reps):
        assert f"==> replica {r.id} <==\nreplica {i} line 3\nreplica {i} line 4\n" in text
    one = cloud.api("GET", "/deployments/d/logs", params={"replica": reps[1].id[:8]}).text
    assert one == "".join(f"replica 1 line {k}\n" for k in range(5))
    r = cloud.api("GET", "/deployments/d/logs", params={"replica": "nope"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "replica"


def test_read_masks_what_an_old_log_holds(cloud: Cloud) -> None:
    deploy(cloud, 1)
    (rep,) = replicas(cloud)
    cloud.fake.write(rep.id, f"key={VALUE}\n", masked=False)  # written before masking
    assert cloud.api("GET", "/deployments/d/logs").text == "key=***\n"


def test_a_gone_backend_gives_empty_logs_and_a_broken_one_503(cloud: Cloud,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    deploy(cloud, 1)
    (rep,) = replicas(cloud)
    cloud.fake.write(rep.id, "hello\n")
    with cloud.app.state.db.session() as s:
        text = log_svc.deployment_logs(s, backends={}, box=None,
                                       workspace_id=rep.workspace_id, name="d")
    assert text == ""

    def broken(self: FakeBackend, handle: dict[str, Any], **_: Any) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FakeBackend, "logs", broken)
    r = cloud.api("GET", "/deployments/d/logs")
    assert r.status_code == 503 and "cannot read this log" in r.json()["error"]["message"]


def test_job_logs_errors_and_workers(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    r = cloud.api("POST", "/jobs", json={"name": "j", "command": ["train"], "workers": 2})
    assert r.status_code == 201, r.text
    assert cloud.api("GET", "/jobs/j/logs").text == ""  # never started
    cloud.app.state.reconcilers.run_once()
    cloud.app.state.reconcilers.run_once()
    with cloud.app.state.db.session() as s:
        job = s.scalars(select(Job)).one()
        workers = list(s.scalars(select(JobWorker).where(JobWorker.job_id == job.id)
                                 .order_by(JobWorker.rank)))
        assert [bool(w.handle) for w in workers] == [True, True], [w.status for w in workers]
        ids = [w.id for w in workers]
    for rank, wid in enumerate(ids):
        cloud.fake.write(wid, f"rank {rank}\n")
    both = cloud.api("GET", "/jobs/j/logs").text
    assert both == "==> worker 0 <==\nrank 0\n\n==> worker 1 <==\nrank 1\n"
    assert cloud.api("GET", "/jobs/j/logs", params={"worker": 1}).text == "rank 1\n"
    for params, param in (({"worker": 5}, "worker"), ({"attempt": 3}, "attempt")):
        r = cloud.api("GET", "/jobs/j/logs", params=params)
        assert r.status_code == 404 and r.json()["error"]["param"] == param
    with cloud.app.state.db.session() as s, pytest.raises(NotFound):
        log_svc.job_logs(s, backends=cloud.app.state.backends, box=None,
                         workspace_id="another-workspace", name="j")

