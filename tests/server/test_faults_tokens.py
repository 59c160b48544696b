"""Tokens an operator must be able to take back, and what a viewer or another workspace
may not do.

Found: an operator creates the tokens of every workspace (``POST
/workspaces/{name}/tokens``) but could neither list nor revoke them: a leaked team token
stayed valid until an admin of that team revoked it. Now ``GET`` and ``DELETE
/workspaces/{name}/tokens[/{token}]`` (operators only, audited); the revoked token is
refused by the API and the gateway at once.
"""

from __future__ import annotations

from neocloud.server.services import workspaces as svc
from tests.server.helpers import Cloud, race_in_order
from tests.server.workload_helpers import error_of


def test_operator_lists_and_revokes_another_workspaces_token(cloud: Cloud) -> None:
    team = cloud.new_workspace("team", role="member")
    assert cloud.api("GET", "/whoami", team).status_code == 200
    listed = cloud.api("GET", "/workspaces/team/tokens").json()["data"]
    assert [(t["name"], t["role"], t["workspace"]) for t in listed] == [
        ("t1", "member", "team")]
    assert all("token" not in t for t in listed)  # never the secret
    r = cloud.api("DELETE", "/workspaces/team/tokens/t1")
    assert r.status_code == 204, r.text
    r = cloud.api("GET", "/whoami", team)
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
    r = cloud.client.post("/v1/embeddings", headers=cloud.h(team),
                          json={"model": "m", "input": "x"})
    assert r.status_code == 401, r.text
    entries = cloud.api("GET", "/audit").json()["data"]
    assert any(e["action"] == "delete_workspace_token" and e["status"] == 204
               for e in entries), entries


def test_only_operators_may_list_or_revoke_other_workspaces_tokens(cloud: Cloud) -> None:
    team = cloud.new_workspace("team", role="admin")
    cloud.new_workspace("other", role="admin")
    for method, path in (("GET", "/workspaces/other/tokens"),
                         ("DELETE", "/workspaces/other/tokens/t1"),
                         ("GET", "/workspaces/team/tokens"),
                         ("DELETE", "/workspaces/team/tokens/t1")):
        r = cloud.api(method, path, team)
        assert r.status_code == 403, (method, path, r.text)
        assert error_of(r)["type"] == "permission_error"
    assert len(cloud.api("GET", "/workspaces/other/tokens").json()["data"]) == 1


def test_unknown_workspace_or_token_names_the_field(cloud: Cloud) -> None:
    cloud.new_workspace("team")
    r = cloud.api("DELETE", "/workspaces/nope/tokens/t1")
    assert r.status_code == 404 and error_of(r)["param"] == "name"
    r = cloud.api("DELETE", "/workspaces/team/tokens/nope")
    assert r.status_code == 404 and error_of(r)["param"] == "token"
    r = cloud.api("GET", "/workspaces/nope/tokens")
    assert r.status_code == 404 and error_of(r)["param"] == "name"


def _admin_names(cloud: Cloud, token: str | None = None) -> list[str]:
    rows = cloud.api("GET", "/workspaces/default/tokens", token).json()["data"]
    return sorted(t["name"] for t in rows if t["role"] == "admin")


def test_the_last_operator_admin_token_cannot_be_revoked(cloud: Cloud) -> None:
    """Found: ``DELETE /tokens/admin-1`` (the bootstrap token, the only operator admin)
    answered 204 and locked every operator out for good; a member token of the operator
    workspace is no operator. Now 409 ``last_operator_admin_token`` on both routes, and
    nothing changes."""
    assert cloud.api("POST", "/tokens", json={"name": "m", "role": "member"}).status_code == 201
    for path, param in (("/tokens/admin-1", "name"),
                        ("/workspaces/default/tokens/admin-1", "token")):
        r = cloud.api("DELETE", path)
        assert r.status_code == 409, (path, r.text)
        err = error_of(r)
        assert err["type"] == "conflict_error", err
        assert err["code"] == "last_operator_admin_token" and err["param"] == param, err
        assert "last admin token" in err["message"], err
        assert cloud.api("GET", "/whoami").status_code == 200  # still works
        assert _admin_names(cloud) == ["admin-1"]


def test_an_operator_admin_token_is_revoked_while_another_remains(cloud: Cloud) -> None:
    r = cloud.api("POST", "/tokens", json={"name": "ops2", "role": "admin"})
    assert r.status_code == 201, r.text
    ops2 = r.json()["token"]
    r = cloud.api("DELETE", "/tokens/admin-1")  # revokes itself: ops2 remains
    assert r.status_code == 204, r.text
    assert cloud.api("GET", "/whoami").status_code == 401
    assert _admin_names(cloud, ops2) == ["ops2"]
    r = cloud.api("DELETE", "/workspaces/default/tokens/ops2", ops2)  # now the last one
    assert r.status_code == 409 and error_of(r)["code"] == "last_operator_admin_token"
    assert cloud.api("GET", "/whoami", ops2).status_code == 200


def test_concurrent_revocations_of_the_last_two_admin_tokens_leave_one(cloud: Cloud) -> None:
    """Two transactions revoke ``admin-1`` and ``ops2`` at once. The first has deleted its
    token but not committed when the second starts: without the lock the second counts
    the first's token as still there and both succeed. Exactly one must."""
    assert cloud.api("POST", "/tokens", json={"name": "ops2", "role": "admin"}).status_code == 201
    db = cloud.app.state.db
    with db.session() as s:
        ws_id = svc.get_workspace(s, name="default").id
    first, second = race_in_order(
        db, lambda s: svc.delete_token(s, workspace_id=ws_id, name="admin-1"),
        lambda s: svc.delete_token(s, workspace_id=ws_id, name="ops2"))
    assert first is None, (first, second)
    assert isinstance(second, svc.LastOperatorAdminToken), (first, second)
    with db.session() as s:
        left = [t.name for t in svc.list_tokens(s, workspace_id=ws_id) if t.role == "admin"]
    assert left == ["ops2"]
