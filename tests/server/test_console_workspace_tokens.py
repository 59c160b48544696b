"""The console's Workspace page lists the tokens of the workspace an operator selects.

Found: an operator with "all workspaces" selected saw only its own (``default``)
workspace's tokens on the Workspace page, as if they were every workspace's. Now with no
workspace selected the tokens table asks to pick one; with one selected it lists that
workspace's tokens (names, roles, prefixes; never a secret). A member sees its own.
"""

from __future__ import annotations

from tests.server.helpers import Cloud


def _login(cloud: Cloud, token: str) -> None:
    cloud.client.cookies.clear()
    r = cloud.client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text


def _tokens_table(cloud: Cloud, path: str) -> str:
    r = cloud.client.get(path)
    assert r.status_code == 200, r.text
    return r.text.split('id="tokens"')[1].split("</table>")[0]


def test_operator_sees_the_selected_workspaces_tokens(cloud: Cloud) -> None:
    secret = cloud.new_workspace("team", role="member")
    r = cloud.api("POST", "/workspaces/team/tokens", json={"name": "ci-bot", "role": "viewer"})
    assert r.status_code == 201, r.text
    _login(cloud, cloud.token)
    everyone = _tokens_table(cloud, "/ui/workspace")
    assert "Pick a workspace" in everyone and "ci-bot" not in everyone
    team = _tokens_table(cloud, "/ui/workspace?ws=team")
    assert "<td>ci-bot</td><td>viewer</td>" in team and "<td>t1</td><td>member</td>" in team
    assert secret not in team and r.json()["token"] not in team
    assert "Pick a workspace" not in team
    own = _tokens_table(cloud, "/ui/workspace?ws=default")
    assert "ci-bot" not in own and "Pick a workspace" not in own
    # A member has no selector: it sees its own workspace's tokens and no one else's.
    _login(cloud, secret)
    mine = _tokens_table(cloud, "/ui/workspace")
    assert "<td>t1</td><td>member</td>" in mine and "Pick a workspace" not in mine
    r = cloud.client.get("/ui/workspace?ws=default")
    assert r.status_code == 404, r.text
