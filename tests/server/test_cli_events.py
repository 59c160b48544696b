"""``neocloud events``: the workspace's events in a table or as JSON, by kind and name of
resource, the newest ``--limit`` of them (a live control plane, both databases)."""

from __future__ import annotations

import json


def test_events_of_the_workspace_by_resource(cli_db) -> None:  # type: ignore[no-untyped-def]
    cli = cli_db
    assert cli("deploy", "web", "--service", "embeddings", "--no-wait").exit_code == 0
    assert cli("job", "create", "train", "--", "echo", "hi").exit_code == 0
    assert cli("volume", "create", "data").exit_code == 0

    r = cli("events")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["AGE", "KIND", "NAME", "TYPE", "REASON", "MESSAGE"]
    kinds = [line.split()[1:3] for line in lines[1:]]
    assert kinds == [["deployment", "web"], ["job", "train"], ["volume", "data"]]  # oldest first

    r = cli("events", "--kind", "job", "--name", "train", "--json")
    data = json.loads(r.stdout)
    assert [(e["kind"], e["name"], e["reason"]) for e in data] == [("job", "train", "Created")]

    r = cli("events", "--limit", "1", "--json")  # the newest one
    assert [e["name"] for e in json.loads(r.stdout)] == ["data"]
    assert json.loads(cli("events", "--name", "nope", "--json").stdout) == []


def test_events_refuses_bad_filters_without_a_traceback(cli_db) -> None:  # type: ignore[no-untyped-def]
    for args in (("--kind", "nodes"), ("--limit", "0"), ("--limit", "1001")):
        r = cli_db("events", *args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output


def test_events_of_another_workspace_are_not_shown(cli_db) -> None:  # type: ignore[no-untyped-def]
    cli = cli_db
    assert cli("workspace", "create", "team-a").exit_code == 0
    r = cli("token", "create", "t", "--workspace", "team-a", "--role", "viewer", "--json")
    viewer = json.loads(r.stdout)["token"]
    assert cli("volume", "create", "ops-data").exit_code == 0
    assert json.loads(cli("events", "--json", token=viewer).stdout) == []
