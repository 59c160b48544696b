"""``neocloud token rm --workspace W``: an operator revokes another workspace's token, as
``token ls --workspace W`` lists them (a live control plane, both databases)."""

from __future__ import annotations

import json


def test_operator_revokes_a_token_of_another_workspace(cli_db) -> None:  # type: ignore[no-untyped-def]
    cli = cli_db
    assert cli("workspace", "create", "team-a").exit_code == 0
    r = cli("token", "create", "ci", "--workspace", "team-a", "--role", "admin", "--json")
    assert r.exit_code == 0, r.output
    secret = json.loads(r.output)["token"]
    assert cli("whoami", token=secret).exit_code == 0

    r = cli("token", "rm", "ci", "--workspace", "team-a")
    assert r.exit_code == 0, r.output
    assert "Revoked token ci of workspace team-a." in r.output
    listed = json.loads(cli("token", "ls", "--workspace", "team-a", "--json").output)
    assert [t["name"] for t in listed] == []
    r = cli("whoami", token=secret)  # refused from now on
    assert r.exit_code == 1 and "invalid API token" in r.output

    r = cli("token", "rm", "ci", "--workspace", "team-a")  # gone already
    assert r.exit_code == 1 and "token 'ci' not found" in r.output
    r = cli("token", "rm", "x", "--workspace", "nope")
    assert r.exit_code == 1 and "nope" in r.output
    assert "Traceback" not in r.output


def test_a_tenant_admin_cannot_revoke_another_workspaces_token(cli_db) -> None:  # type: ignore[no-untyped-def]
    cli = cli_db
    assert cli("workspace", "create", "team-a").exit_code == 0
    r = cli("token", "create", "boss", "--workspace", "team-a", "--role", "admin", "--json")
    tenant = json.loads(r.output)["token"]
    assert cli("token", "create", "ops", "--json").exit_code == 0  # in the operator's own

    r = cli("token", "rm", "ops", "--workspace", "default", token=tenant)
    assert r.exit_code == 1 and "for operators" in r.output and "Traceback" not in r.output
    names = [t["name"] for t in json.loads(cli("token", "ls", "--json").output)]
    assert "ops" in names
    # without --workspace: the caller's own workspace, as before
    r = cli("token", "rm", "ops")
    assert r.exit_code == 0 and "Revoked token ops." in r.output


def test_an_empty_name_is_named_as_such(cli_db) -> None:  # type: ignore[no-untyped-def]
    """``token rm ''`` used to print ``Error: HTTP 307`` (the API's redirect of
    ``/tokens/`` to ``/tokens``) and ``--workspace ''`` blamed the base URL (the 404 of
    ``/workspaces//tokens/x``): both say which name is empty now, and nothing changes."""
    cli = cli_db
    assert cli("token", "create", "ci", "--json").exit_code == 0
    for args in (("token", "rm", ""), ("token", "rm", "", "--workspace", "default"),
                 ("token", "rm", "ci", "--workspace", "")):
        r = cli(*args)
        assert r.exit_code == 1, (args, r.output)
        assert "empty name" in r.output and "HTTP 307" not in r.output, (args, r.output)
        assert "base URL" not in r.output and "Traceback" not in r.output, (args, r.output)
    names = [t["name"] for t in json.loads(cli("token", "ls", "--json").output)]
    assert "ci" in names


def test_the_last_operator_admin_token_is_kept(cli_db) -> None:  # type: ignore[no-untyped-def]
    """``token rm admin-1`` (the only operator admin token) used to succeed and lock every
    operator out; now it is refused with a message that says what to do, no traceback."""
    cli = cli_db
    for args in (("token", "rm", "admin-1"), ("token", "rm", "admin-1", "--workspace", "default")):
        r = cli(*args)
        assert r.exit_code == 1, (args, r.output)
        assert "last admin token" in r.output and "--role admin" in r.output, r.output
        assert "Traceback" not in r.output and "Revoked" not in r.output, r.output
    assert cli("whoami").exit_code == 0
    r = cli("token", "create", "ops2", "--role", "admin", "--json")
    assert r.exit_code == 0, r.output
    r = cli("token", "rm", "admin-1")
    assert r.exit_code == 0 and "Revoked token admin-1." in r.output, r.output
