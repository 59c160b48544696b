"""The audit log: every change and every denied attempt, who sees which entries, filters,
and the CLI (both databases)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from neocloud.cli.context import CliState
from neocloud.cli.main import app as cli_app
from tests.asgi_client import SyncASGITransport, real_cloud
from tests.server.helpers import Cloud


def _audit(cloud: Cloud, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
    r = cloud.client.get("/api/v1/audit", headers=cloud.h(token), params=params)
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()["data"]
    return entries


def _has(entries: list[dict[str, Any]], **want: Any) -> bool:
    return any(all(e.get(k) == v for k, v in want.items()) for e in entries)


def test_denied_cross_workspace_call_and_successful_delete_appear(cloud: Cloud) -> None:
    tok_a = cloud.new_workspace("team-a")
    tok_b = cloud.new_workspace("team-b")
    r = cloud.api("POST", "/deployments", token=tok_b,
                  json={"name": "model-b", "service": "embeddings", "replicas": 0})
    assert r.status_code == 201
    # A reaches for B's deployment: 404 (names are not probed), but recorded as denied.
    assert cloud.api("DELETE", "/deployments/model-b", token=tok_a).status_code == 404
    assert cloud.api("GET", "/deployments/model-b", token=tok_a).status_code == 404
    # A 404 on a name nobody has is no attempt on anyone: not recorded for a read.
    assert cloud.api("GET", "/deployments/nobody-has-it", token=tok_a).status_code == 404
    assert cloud.api("DELETE", "/deployments/model-b", token=tok_b).status_code == 204

    seen_by_b = _audit(cloud, tok_b)
    assert _has(seen_by_b, action="create_deployment", target="deployments/model-b",
                outcome="success", status=201, workspace="team-b", token_name="t1")
    assert _has(seen_by_b, action="delete_deployment", target="deployments/model-b",
                outcome="success", status=204, workspace="team-b", token_name="t1")
    for method, action in (("DELETE", "delete_deployment"), ("GET", "get_deployment")):
        assert _has(seen_by_b, method=method, action=action, target="deployments/model-b",
                    outcome="denied", status=404, code="not_found", workspace="team-a",
                    token_name="t1", target_workspace="team-b"), seen_by_b
    seen_by_a = _audit(cloud, tok_a)
    assert _has(seen_by_a, action="delete_deployment", outcome="denied", workspace="team-a")
    assert not _has(seen_by_a, target="deployments/nobody-has-it")
    assert not _has(seen_by_a, outcome="success", workspace="team-b")  # B's own calls
    # The operator sees both workspaces' entries.
    every = _audit(cloud)
    assert _has(every, workspace="team-a", outcome="denied")
    assert _has(every, workspace="team-b", action="delete_deployment", outcome="success")


def test_an_operators_calls_on_a_workspace_are_seen_by_its_admin(cloud: Cloud) -> None:
    # Was: the operator's revocation of team-b's token was recorded with no target
    # workspace, so team-b's admin never saw it.
    tok_b = cloud.new_workspace("team-b")
    r = cloud.api("POST", "/workspaces/team-b/tokens", json={"name": "ci", "role": "member"})
    assert r.status_code == 201, r.text
    assert cloud.api("DELETE", "/workspaces/team-b/tokens/ci").status_code == 204
    assert cloud.api("PUT", "/workspaces/team-b/quota",
                     json={"gpus_total": 4}).status_code in (200, 201)
    seen_by_b = _audit(cloud, tok_b)
    for method, status in (("POST", 201), ("DELETE", 204)):
        assert _has(seen_by_b, method=method, target="workspaces/team-b/tokens" + (
            "/ci" if method == "DELETE" else ""), outcome="success", status=status,
            target_workspace="team-b"), seen_by_b
    assert _has(seen_by_b, method="PUT", target="workspaces/team-b/quota",
                outcome="success", target_workspace="team-b"), seen_by_b
    operator_ws = next(e["workspace"] for e in seen_by_b if e["method"] == "DELETE")
    assert operator_ws not in (None, "team-b")
    # Another workspace sees none of it.
    tok_c = cloud.new_workspace("team-c")
    assert not _has(_audit(cloud, tok_c), target_workspace="team-b")


def test_a_call_refused_before_its_route_ran_names_its_caller(cloud: Cloud) -> None:
    # Was: a body that is not JSON is refused (400) before the route asks who called, and
    # the entry had no workspace and no token name.
    tok_b = cloud.new_workspace("team-b")
    r = cloud.client.post("/api/v1/deployments", headers={**cloud.h(tok_b),
                          "content-type": "application/json"}, content=b"{not json")
    assert r.status_code == 400, r.text
    r = cloud.client.post("/api/v1/deployments", headers=cloud.h(tok_b),
                          json={"name": "Bad_Name", "service": "embeddings"})
    assert r.status_code == 422, r.text
    refused = [e for e in _audit(cloud, tok_b) if e["status"] in (400, 422)]
    assert len(refused) == 2, refused
    assert all(e["workspace"] == "team-b" and e["token_name"] == "t1" for e in refused)
    # A token that matches nothing still names nobody.
    r = cloud.client.post("/api/v1/deployments", headers=cloud.h("nc_nothing"),
                          content=b"{not json")
    assert r.status_code in (400, 401)
    assert _has(_audit(cloud), status=r.status_code, workspace=None, token_name=None)


def test_401_and_403_are_recorded_and_only_admins_read(cloud: Cloud) -> None:
    member = cloud.api("POST", "/tokens", json={"name": "dev", "role": "member"}).json()["token"]
    r = cloud.client.get("/api/v1/deployments", headers={"Authorization": "Bearer nc_bad_x"})
    assert r.status_code == 401
    assert cloud.api("POST", "/shapes", token=member, json={
        "name": "gpu.x", "cpu_milli": 1, "memory_mib": 1,
        "price_per_hour_usd": 1}).status_code == 403
    assert cloud.api("GET", "/audit", token=member).status_code == 403
    every = _audit(cloud)
    assert _has(every, method="GET", target="deployments", outcome="denied", status=401,
                code="invalid_api_key", workspace=None, token_name=None)
    assert _has(every, action="create_shape", outcome="denied", status=403, token_name="dev",
                code="permission_denied")
    assert _has(every, action="list_audit", outcome="denied", status=403, token_name="dev")
    # Failed changes are recorded too, with their code.
    assert cloud.api("POST", "/deployments", json={"name": "Bad_Name"}).status_code == 422
    assert _has(_audit(cloud), action="create_deployment", outcome="failed", status=422,
                code="validation_failed")
    # Reads that succeed are not recorded.
    assert not _has(_audit(cloud), action="list_deployments", outcome="success")


def test_since_and_limit(cloud: Cloud) -> None:
    for i in range(5):
        assert cloud.api("PUT", f"/secrets/s{i}", json={"value": "v"}).status_code == 201
    entries = _audit(cloud, limit=3)
    assert [e["target"] for e in entries] == ["secrets/s2", "secrets/s3", "secrets/s4"]
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _audit(cloud, since=later) == []
    assert len(_audit(cloud, since="2000-01-01T00:00:00")) >= 5
    r = cloud.api("GET", "/audit", params={"limit": 0})
    assert r.status_code == 422 and r.json()["error"]["param"] == "query.limit"


def test_cli_audit(tmp_path: Path, db_url: str) -> None:
    transport, token, _app = real_cloud(tmp_path / "home", db_url)
    try:
        _cli_audit(transport, token)
    finally:
        transport.stop()


def _cli_audit(transport: SyncASGITransport, token: str) -> None:
    h = {"Authorization": f"Bearer {token}"}
    with httpx.Client(transport=transport, base_url="http://cloud.test") as c:
        assert c.delete("/api/v1/tokens/nobody", headers=h).status_code == 404

    def state() -> CliState:
        s = CliState(transport=transport)
        s.url, s.token = "http://cloud.test", token
        return s

    res = CliRunner().invoke(cli_app, ["audit", "--since", "1h", "--json"], obj=state(),
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    entries = json.loads(res.stdout)
    assert _has(entries, action="delete_token", target="tokens/nobody", outcome="failed",
                status=404)
    res = CliRunner().invoke(cli_app, ["audit"], obj=state(), catch_exceptions=False)
    assert res.exit_code == 0 and "delete_token" in res.stdout and "tokens/nobody" in res.stdout
    res = CliRunner().invoke(cli_app, ["audit", "--since", "yesterday"], obj=state())
    assert res.exit_code == 2 and "--since" in res.output


def test_refused_create_names_its_object_and_a_dry_run_is_not_recorded(cloud: Cloud) -> None:
    body = {"name": "dup", "service": "embeddings", "replicas": 0}
    assert cloud.api("POST", "/deployments", json=body).status_code == 201
    r = cloud.api("POST", "/deployments", json=body)  # the same name again: refused
    assert r.status_code == 409, r.text
    assert cloud.api("POST", "/deployments?dry_run=true",
                     json={**body, "name": "only-checked"}).status_code == 200
    entries = _audit(cloud)
    assert _has(entries, action="create_deployment", target="deployments/dup", status=409,
                code=r.json()["error"]["code"])
    assert not any("only-checked" in e["target"] for e in entries), entries
    assert not any(e["action"] == "create_deployment" and e["status"] == 200 for e in entries)


def test_gateway_401_and_402_refusals_are_recorded(cloud: Cloud) -> None:
    """The gateway's refusals are in the audit log (committed before the answer): a bad
    or missing token (401, no workspace) and a workspace past its budget hard stop (402,
    with the caller's workspace and token)."""
    from sqlalchemy import select

    from neocloud.server.db.tables import Shape, Workspace
    from neocloud.server.metering.records import record_running

    tok = cloud.new_workspace("team")
    body = {"model": "emb", "input": "hello"}
    bad = cloud.client.post("/v1/embeddings", json=body,
                            headers={"Authorization": "Bearer nc_bad_x"})
    assert bad.status_code == 401
    assert cloud.client.post("/endpoints/emb/x", content=b"{}").status_code == 401
    every = _audit(cloud)
    assert _has(every, action="gateway", method="POST", target="v1/embeddings",
                outcome="denied", status=401, code="invalid_api_key", workspace=None,
                token_name=None), every
    assert _has(every, action="gateway", target="endpoints/emb/x", status=401,
                code="missing_api_key")
    r = cloud.api("POST", "/deployments", token=tok, json={
        "name": "emb", "service": "embeddings", "shape": "cpu.small", "replicas": 0})
    assert r.status_code == 201, r.text
    cloud.app.state.routes.refresh()
    assert cloud.client.post("/v1/embeddings", json=body,
                             headers=cloud.h(tok)).status_code == 503  # scaled to zero
    assert cloud.api("PUT", "/budget?workspace=team", json={
        "monthly_micros": 100_000, "hard_stop": True}).status_code in (200, 201)
    with cloud.app.state.db.session() as s:  # spend past the budget
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "team")).one()
        now = datetime.now(UTC)
        record_running(s, workspace_id=ws, kind="replica", object_id="x" * 32, name="emb",
                       shape=s.get(Shape, "gpu.h100"), start=now - timedelta(seconds=600),
                       end=now)
    cloud.app.state.routes.refresh()
    r = cloud.client.post("/v1/embeddings", json=body, headers=cloud.h(tok))
    assert r.status_code == 402 and r.json()["error"]["code"] == "budget_exceeded", r.text
    seen_by_team = _audit(cloud, tok)
    assert _has(seen_by_team, action="gateway", method="POST", target="v1/embeddings",
                outcome="denied", status=402, code="budget_exceeded", workspace="team",
                token_name="t1"), seen_by_team
    # Requests the gateway serves or fails for other reasons are not audit entries.
    assert not _has(_audit(cloud), action="gateway", status=503)
