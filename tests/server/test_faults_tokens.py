"""Tokens an operator must be able to take back, and what a viewer or another workspace
may not do.

Found: an operator creates the tokens of every workspace (``POST
/workspaces/{name}/tokens``) but could neither list nor revoke them: a leaked team token
stayed valid until an admin of that team revoked it. Now ``GET`` and ``DELETE
/workspaces/{name}/tokens[/{token}]`` (operators only, audited); the revoked token is
refused by the API and the gateway at once.
"""

from __future__ import annotations

from tests.server.helpers import Cloud
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
