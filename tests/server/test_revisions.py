"""Revisions of a deployment: every change raises it, GET returns it with an ETag, a stale
update is a 409; events belong to a deployment's id; reasons carry stable codes (both
databases; the reconciler is driven by hand)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import select
from typer.testing import CliRunner

from neocloud.cli.context import CliState
from neocloud.cli.main import app as cli_app
from neocloud.server.db.tables import Replica
from neocloud.server.reconcilers.deployments import CRASH_LOOP_RESTARTS
from tests.server.helpers import Cloud

H100 = [{"type": "H100", "count": 8, "memory_mib": 81559}]


def _create(cloud: Cloud, name: str = "d", **kw: object) -> dict:
    r = cloud.api("POST", "/deployments", json={"name": name, "service": "embeddings", **kw})
    assert r.status_code == 201, r.text
    return r.json()


def test_every_change_raises_the_revision_and_get_returns_its_etag(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    assert _create(cloud)["revision"] == 1
    r = cloud.api("GET", "/deployments/d")
    assert r.json()["revision"] == 1 and r.headers["ETag"] == '"1"'
    r = cloud.api("PATCH", "/deployments/d", json={"replicas": 2})
    assert r.status_code == 200 and r.json()["revision"] == 2 and r.headers["ETag"] == '"2"'
    r = cloud.api("PATCH", "/deployments/d", json={"env": {"A": "1"}})
    assert r.json()["revision"] == 3 and r.json()["generation"] == 2
    r = cloud.api("PATCH", "/deployments/d", json={"drain_timeout_s": 30})
    assert r.json()["revision"] == 4 and r.json()["drain_timeout_s"] == 30
    # No change: no new revision.
    assert cloud.api("PATCH", "/deployments/d", json={"replicas": 2}).json()["revision"] == 4


def test_stale_if_match_or_revision_is_409_and_changes_nothing(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud)
    etag = cloud.api("GET", "/deployments/d").headers["ETag"]
    # Another client changes it first.
    assert cloud.api("PATCH", "/deployments/d", json={"replicas": 3}).status_code == 200
    r = cloud.client.patch("/api/v1/deployments/d", json={"replicas": 1},
                           headers={**cloud.h(), "If-Match": etag})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "revision_conflict" and err["param"] == "If-Match"
    assert "revision 2" in err["message"]
    r = cloud.api("PATCH", "/deployments/d", json={"replicas": 1, "revision": 1})
    assert r.status_code == 409 and r.json()["error"]["param"] == "revision"
    assert cloud.api("GET", "/deployments/d").json()["replicas"] == 3
    # The current revision applies.
    r = cloud.client.patch("/api/v1/deployments/d", json={"replicas": 1},
                           headers={**cloud.h(), "If-Match": '"2"'})
    assert r.status_code == 200 and r.json()["replicas"] == 1 and r.json()["revision"] == 3
    r = cloud.client.patch("/api/v1/deployments/d", json={"replicas": 2},
                           headers={**cloud.h(), "If-Match": "garbage"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "If-Match"


def test_history_marks_the_active_revision(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, env={"API_KEY": "plain-value"})
    cloud.api("PATCH", "/deployments/d", json={"replicas": 2})
    rows = cloud.api("GET", "/deployments/d/revisions").json()["data"]
    assert [(r["revision"], r["active"]) for r in rows] == [(1, False), (2, True)]
    assert rows[1]["spec"]["replicas"] == 2 and "replicas 1->2" in rows[1]["message"]
    assert rows[0]["spec"]["env"]["API_KEY"] == "***"  # masked like the deployment's env


def test_recreated_name_starts_with_no_old_events_or_replicas(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud)
    cloud.reconcile(2)
    old = cloud.api("GET", "/deployments/d").json()
    assert old["status"] == "ready"
    assert cloud.api("DELETE", "/deployments/d").status_code == 204
    cloud.reconcile(3)
    assert cloud.api("GET", "/deployments/d").status_code == 404
    new = _create(cloud)
    assert new["id"] != old["id"] and new["revision"] == 1
    evs = cloud.api("GET", "/deployments/d/events").json()["data"]
    assert [e["reason"] for e in evs] == ["Created"], evs
    assert all(e["object_id"] == new["id"] for e in evs if "object_id" in e)
    cloud.reconcile(2)
    evs = cloud.api("GET", "/deployments/d/events").json()["data"]
    assert not any(e["reason"] in ("Deleting", "Deleted") for e in evs), evs
    reps = cloud.api("GET", "/deployments/d").json()["replica_list"]
    assert len(reps) == 1 and reps[0]["id"] not in {r["id"] for r in old["replica_list"]}


def test_pending_reasons_carry_stable_codes(cloud: Cloud) -> None:
    cloud.add_fake_node("cpu-only")
    _create(cloud, "g", shape="gpu.h100")
    cloud.reconcile(2)
    g = cloud.api("GET", "/deployments/g").json()
    assert g["status"] == "pending" and g["pending_code"] == "NO_MATCHING_GPU_TYPE", g
    cloud.add_fake_node("gpu-1", gpus=[{"type": "H100", "count": 1, "memory_mib": 81559}])
    _create(cloud, "big", shape="gpu.h100x8")
    cloud.reconcile(2)
    big = cloud.api("GET", "/deployments/big").json()
    assert big["pending_code"] == "INSUFFICIENT_GPUS_PER_NODE", big
    assert cloud.api("GET", "/deployments/g").json()["status"] == "ready"
    _create(cloud, "g2", shape="gpu.h100")
    cloud.reconcile(2)
    g2 = cloud.api("GET", "/deployments/g2").json()
    assert g2["pending_code"] == "WAITING_FOR_CAPACITY", g2


def test_crash_loop_status_is_steady_with_the_last_exit_reason(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    _create(cloud, "c")
    seen: list[str] = []
    for _ in range(CRASH_LOOP_RESTARTS + 3):
        cloud.reconcile(1)
        with cloud.app.state.db.session() as s:
            for r in s.scalars(select(Replica).where(Replica.status.in_(("starting", "ready")))):
                cloud.fake.write(r.id, "Traceback ...\nRuntimeError: model file is corrupt\n")
                cloud.fake.crash(r.id)
        cloud.reconcile(1)
        seen.append(cloud.api("GET", "/deployments/c").json()["status"])
    # Once in the crash loop it stays there (no flip to pending at each restart).
    first = seen.index("failed")
    assert set(seen[first:]) == {"failed"}, seen
    dep = cloud.api("GET", "/deployments/c").json()
    assert dep["pending_code"] == "CRASH_LOOP"
    assert "RuntimeError: model file is corrupt" in dep["pending_reason"]


def _cli(cloud: Cloud) -> Any:
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

    return cli


def test_cli_deploy_with_autoscaling_autoscale_and_history(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    cli = _cli(cloud)
    res = cli("deploy", "a", "--service", "embeddings", "--min", "0", "--max", "4",
              "--target-inflight", "2", "--drain-timeout", "30", "--no-wait", "--json")
    assert res.exit_code == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["autoscaling"]["min_replicas"] == 0 and out["autoscaling"]["target"] == 2
    assert out["drain_timeout_s"] == 30 and out["replicas"] == 1
    res = cli("autoscale", "a", "--max", "8")
    assert res.exit_code == 0 and "0..8 replicas" in res.stdout, res.stdout
    res = cli("autoscale", "a", "--min", "5", "--max", "2")
    assert res.exit_code == 2 and "Invalid value for '--max'" in res.stderr
    assert "--max (2) must be at least --min (5)" in res.stderr
    assert "Traceback" not in res.stderr
    res = cli("autoscale", "a", "--off")
    assert res.exit_code == 0 and "off" in res.stdout
    res = cli("history", "a")
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert len(lines) == 3 and "active" in lines[-1] and "superseded" in lines[0], res.stdout
    res = cli("status", "a")
    assert "revision" in res.stdout


def test_dry_run_says_whether_it_fits_and_stores_nothing(cloud: Cloud) -> None:
    cloud.add_fake_node("cpu-1")
    r = cloud.api("POST", "/deployments?dry_run=true",
                  json={"name": "x", "service": "embeddings"})
    assert r.status_code == 200, r.text
    assert r.json()["fits_now"] is True and r.json()["node"] == "cpu-1"
    r = cloud.api("POST", "/deployments?dry_run=true",
                  json={"name": "x", "service": "chat", "shape": "gpu.h100"})
    body = r.json()
    assert body["fits_now"] is False and body["can_ever_fit"] is False
    assert body["code"] == "NO_MATCHING_GPU_TYPE" and "without GPUs" in body["reason"], body
    r = cloud.api("POST", "/deployments?dry_run=true",
                  json={"name": "x", "service": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "service"
    assert cloud.api("GET", "/deployments").json()["data"] == []
    res = _cli(cloud)("deploy", "x", "--service", "chat", "--shape", "gpu.h100", "--dry-run")
    assert res.exit_code == 1 and "can never fit [NO_MATCHING_GPU_TYPE]" in res.stdout, res.stdout
    res = _cli(cloud)("deploy", "x", "--service", "embeddings", "--dry-run")
    assert res.exit_code == 0 and "node cpu-1" in res.stdout
    assert cloud.api("GET", "/deployments").json()["data"] == []


def _live(cloud: Cloud, name: str) -> list[dict]:
    return [r for r in cloud.api("GET", f"/deployments/{name}").json()["replica_list"]
            if r["status"] in ("pending", "starting", "ready", "failed")]


def test_max_surge_and_max_unavailable_bound_a_rollout(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    # surge 0, unavailable 1: never more than 3 replicas; one old stops before a new starts
    _create(cloud, "u", replicas=3, max_surge=0, max_unavailable=1)
    cloud.reconcile(2)
    assert cloud.api("PATCH", "/deployments/u", json={"env": {"V": "2"}}).status_code == 200
    most, fewest_ready = 0, 3
    for _ in range(8):
        cloud.reconcile(1)
        live = _live(cloud, "u")
        most = max(most, len(live))
        fewest_ready = min(fewest_ready, sum(r["status"] == "ready" for r in live))
    assert most == 3 and fewest_ready == 2
    assert {r["generation"] for r in _live(cloud, "u")} == {2}
    # surge 2: two new replicas start at once
    _create(cloud, "s", replicas=2, max_surge=2)
    cloud.reconcile(2)
    assert cloud.api("PATCH", "/deployments/s", json={"env": {"V": "2"}}).status_code == 200
    cloud.reconcile(1)
    gens = [r["generation"] for r in _live(cloud, "s")]
    assert gens.count(2) == 2, gens
    r = cloud.api("PATCH", "/deployments/s", json={"max_surge": 0, "max_unavailable": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_surge"
    r = cloud.api("POST", "/deployments", json={"name": "z", "service": "embeddings",
                                                "max_surge": 0, "max_unavailable": 0})
    assert r.status_code in (400, 422), r.text
