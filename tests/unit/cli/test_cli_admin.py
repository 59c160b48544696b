from __future__ import annotations

import json
from collections.abc import Callable

from fakecloud import BASE, FakeCloud
from typer.testing import Result

from neocloud.sdk import Client

Run = Callable[..., Result]


def _rows(table: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in table.splitlines()[1:] if line.strip()}


def test_token_lifecycle(run: Run, cloud: FakeCloud) -> None:
    created = run("token", "create", "ci", "--role", "viewer")
    assert created.exit_code == 0, created.stderr
    secret = created.stdout.strip()
    assert "not shown again" in created.stderr
    with Client(BASE, secret, transport=cloud.transport) as ci:
        assert ci.whoami().token.role == "viewer"
    rows = _rows(run("token", "ls").stdout)
    assert rows["ci"][1:3] == ["viewer", "default"]
    listed = json.loads(run("token", "ls", "--json").stdout)
    assert {t["name"] for t in listed} == {"admin", "ci"}
    assert all("token" not in t for t in listed)
    assert run("token", "rm", "ci").stdout.strip() == "Revoked token ci."
    gone = run("token", "rm", "ci")
    assert gone.exit_code == 1 and gone.stderr.startswith("Error: token 'ci' not found")
    bad_role = run("token", "create", "x", "--role", "root")
    assert bad_role.exit_code == 2 and "'--role'" in bad_role.stderr


def test_workspaces_and_foreign_tokens(run: Run) -> None:
    made = run("workspace", "create", "team-a", "--json")
    assert json.loads(made.stdout)["name"] == "team-a"
    assert set(_rows(run("workspace", "ls").stdout)) == {"default", "team-a"}
    token = json.loads(run("token", "create", "boss", "--role", "admin", "-w", "team-a",
                           "--json").stdout)
    assert token["workspace"] == "team-a" and token["token"]
    # An operator lists another workspace's tokens; secrets are never shown.
    theirs = run("token", "ls", "--workspace", "team-a")
    assert theirs.exit_code == 0, theirs.stderr
    assert _rows(theirs.stdout)["boss"][1:3] == ["admin", "team-a"]
    assert token["token"] not in theirs.stdout
    listed = json.loads(run("token", "ls", "-w", "team-a", "--json").stdout)
    assert [(t["name"], t["workspace"]) for t in listed] == [("boss", "team-a")]
    assert all("token" not in t for t in listed)
    missing = run("token", "ls", "--workspace", "nope")
    assert missing.exit_code == 1 and "workspace 'nope' not found" in missing.stderr
    # The new token belongs to team-a: it is not an operator and sees only its workspace.
    as_team = run("workspace", "create", "b", login=False,
                  env={"NEOCLOUD_URL": BASE, "NEOCLOUD_TOKEN": token["token"]})
    assert as_team.exit_code == 1
    assert "Error: only an operator admin may do this" in as_team.stderr
    peek = run("token", "ls", "--workspace", "default", login=False,
               env={"NEOCLOUD_URL": BASE, "NEOCLOUD_TOKEN": token["token"]})
    assert peek.exit_code == 1 and "only an operator admin may do this" in peek.stderr
    duplicate = run("workspace", "create", "team-a")
    assert duplicate.exit_code == 1
    assert "already exists (param: body.name)" in duplicate.stderr


def test_nodes(run: Run, cloud: FakeCloud) -> None:
    added = run("node", "add", "gpu-1", "--cpu-milli", "32000", "--memory-mib", "262144",
                "--gpu", "H100:8:81559", "--label", "zone=eu-1",
                "--backend", "fake", "--json")
    assert added.exit_code == 0, added.stderr
    body = json.loads(cloud.requests[-1].content)
    assert body["gpus"] == [{"type": "H100", "count": 8, "memory_mib": 81559}]
    assert body["labels"] == {"zone": "eu-1"}
    assert len(json.loads(added.stdout)["gpus"]) == 8
    rows = _rows(run("node", "ls").stdout)
    assert rows["gpu-1"][1:3] == ["ready", "fake"]
    assert rows["gpu-1"][4:7] == ["0/32", "0.0/256.0", "0/8xH100"]
    mixed = run("node", "add", "gpu-2", "--cpu-milli", "1000", "--memory-mib", "1000",
                "--gpu", "H100:1:1", "--gpu", "A10:1:1")
    assert mixed.exit_code == 2 and "one type" in mixed.stderr
    assert run("node", "cordon", "gpu-1").stdout.strip() == "Cordoned gpu-1."
    assert _rows(run("node", "ls").stdout)["gpu-1"][1] == "cordoned"
    assert json.loads(run("node", "uncordon", "gpu-1", "--json").stdout)["status"] == "ready"
    assert run("node", "rm", "gpu-1").exit_code == 0
    assert set(_rows(run("node", "ls").stdout)) == {"local"}


def test_node_add_bad_input(run: Run, cloud: FakeCloud) -> None:
    base = ("node", "add", "n1", "--cpu-milli", "1000", "--memory-mib", "1024")
    for extra, option in [
        (("--gpu", "H100:8"), "'--gpu'"),
        (("--gpu", "H100:x:1"), "'--gpu'"),
        (("--gpu", "H100:0:1"), "'--gpu'"),
        (("--label", "zone"), "'--label'"),
        (("--backend", "docker"), "'--backend'"),
    ]:
        result = run(*base, *extra)
        assert result.exit_code == 2, (extra, result.stdout)
        assert option in result.stderr
    missing = run("node", "add", "n1", "--memory-mib", "1024")
    assert missing.exit_code == 2 and "--cpu-milli" in missing.stderr
    assert cloud.requests == []


def test_shapes(run: Run, cloud: FakeCloud) -> None:
    rows = _rows(run("shape", "ls").stdout)
    assert rows["gpu.h100x8"][3:6] == ["8", "H100", "$24.00"]
    added = run("shape", "add", "gpu.a10-half", "--cpu-milli", "4000", "--memory-mib", "16384",
                "--gpu-milli", "500", "--gpu-type", "A10", "--price", "0.55")
    assert added.exit_code == 0, added.stderr
    assert _rows(added.stdout)["gpu.a10-half"][1:6] == ["4", "16", "0.5", "A10", "$0.55"]
    assert json.loads(cloud.requests[-1].content)["price_per_hour_usd"] == 0.55
    both = run("shape", "add", "x", "--cpu-milli", "1", "--memory-mib", "1", "--gpus", "1",
               "--gpu-milli", "500", "--price", "1")
    assert both.exit_code == 2 and "not both" in both.stderr
    negative = run("shape", "add", "x", "--cpu-milli", "1", "--memory-mib", "1", "--price", "-1")
    assert negative.exit_code == 2 and "'--price'" in negative.stderr
    shapes = json.loads(run("shape", "ls", "--json").stdout)
    assert "gpu.a10-half" in {s["name"] for s in shapes}


def test_usage(run: Run) -> None:
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    run("deploy", "api", "-s", "embeddings", "--no-wait")
    result = run("usage")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Workspace default: usage from the start to 20")
    assert lines[0].endswith(" UTC")
    end = lines.index("Replica time: 4m00s")
    by_name = {line.split()[1]: line.split() for line in lines[2:end - 1]}
    assert by_name["web"] == ["replica", "web", "cpu.small", "2m00s", "-", "7", "-", "-",
                              "$0.001667"]
    assert set(by_name) == {"web", "api"}
    assert lines[end - 1].split() == ["TOTAL", "$0.003334"]
    # Then what the total is: no running time is left out of records here (the fields
    # are absent, as from a server older than them), and which figure is billed.
    assert lines[end + 1:] == [
        "A live estimate over every period so far; what is billed is each period's "
        "invoice, the usage recorded in it (`neocloud invoice`: this month's, a draft until "
        "the month closes)."]
    bill = json.loads(run("usage", "--json").stdout)
    assert bill["total_usd"] == sum(line["cost_usd"] for line in bill["lines"])
    assert bill["replica_seconds"] == 240.0


def test_whoami(run: Run) -> None:
    result = run("whoami")
    assert result.stdout.splitlines()[0] == "workspace: default (operator)"
    assert json.loads(run("whoami", "--json").stdout)["token"]["name"] == "admin"
