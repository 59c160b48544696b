from __future__ import annotations

import json

import pytest
from fakecloud import BASE, FakeCloud

from neocloud import errors
from neocloud.models import DeploymentStatus, GpuSpec, NodeStatus, Role
from neocloud.sdk import Client, WaitProgress


def test_deployment_crud(client: Client, cloud: FakeCloud) -> None:
    created = client.deployments.create("web", "embeddings", env={"A": "1"})
    assert created.status == DeploymentStatus.pending and created.replicas == 1
    body = json.loads(cloud.requests[-1].content)
    assert body == {"name": "web", "service": "embeddings", "shape": "cpu.small",
                    "replicas": 1, "env": {"A": "1"}, "priority": 0, "preemptible": False}
    assert [d.name for d in client.deployments.list()] == ["web"]

    updated = client.deployments.update("web", replicas=3)
    assert json.loads(cloud.requests[-1].content) == {"replicas": 3}
    assert cloud.requests[-1].method == "PATCH"
    assert updated.replicas == 3 and updated.generation == 1
    rolled = client.deployments.update("web", env={"A": "2"})
    assert rolled.generation == 2 and rolled.env == {"A": "2"}

    got = client.deployments.get("web")
    assert len(got.replica_list) == 3

    client.deployments.delete("web")
    assert cloud.requests[-1].method == "DELETE"
    with pytest.raises(errors.NotFound):
        client.deployments.get("web")
    assert client.deployments.list() == []


def test_wait_ready_reports_progress(client: Client, cloud: FakeCloud) -> None:
    cloud.ready_after = 3
    client.deployments.create("web", "embeddings", replicas=2)
    seen: list[WaitProgress] = []
    ready = client.deployments.wait_ready("web", timeout_s=30, poll_s=0, on_progress=seen.append)
    assert ready.status == DeploymentStatus.ready and ready.ready_replicas == 2
    assert [p.deployment.status for p in seen] == ["pending", "pending", "ready"]
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(seen, seen[1:], strict=False))
    # Events come back oldest first even though the server sends newest first.
    assert seen[-1].latest_event is not None and seen[-1].latest_event.reason == "Ready"
    ids = [e.id for e in seen[-1].events]
    assert ids == sorted(ids)


def test_wait_ready_stops_early_on_failure(client: Client) -> None:
    client.deployments.create("bad", "crash:now")
    with pytest.raises(errors.Unavailable) as info:
        client.deployments.wait_ready("bad", timeout_s=30, poll_s=0)
    assert info.value.code == "deployment_failed"
    assert "process exited with code 1" in info.value.message
    assert "Crashed" in info.value.message


def test_wait_ready_timeout_names_pending_reason(client: Client) -> None:
    client.deployments.create("big", "embeddings", shape="gpu.h100x8")
    polls: list[WaitProgress] = []
    with pytest.raises(errors.Timeout) as info:
        client.deployments.wait_ready("big", timeout_s=0, poll_s=0, on_progress=polls.append)
    assert len(polls) == 1
    message = info.value.message
    assert "not ready after 0 s" in message
    assert "no node has 8 free GPUs of type H100" in message
    assert "0/1 replicas ready" in message and "Unschedulable" in message


def test_wait_ready_on_deleted_deployment(client: Client) -> None:
    client.deployments.create("web", "embeddings")
    client.deployments.delete("web")
    with pytest.raises(errors.NotFound):
        client.deployments.wait_ready("web", poll_s=0)


def test_events_and_logs(client: Client, cloud: FakeCloud) -> None:
    client.deployments.create("web", "embeddings", replicas=2)
    client.deployments.get("web")
    events = client.deployments.events("web")
    assert [e.reason for e in events][:2] == ["Created", "Scheduled"]
    assert client.events.list(kind="deployment", name="web", limit=1) == events[-1:]
    query = cloud.requests[-1].url.params
    assert (query["kind"], query["name"], query["limit"]) == ("deployment", "web", "1")

    everything = client.deployments.logs("web")
    assert everything.count("==> replica ") == 2
    one = client.deployments.logs("web", tail=1, replica="web-1-0")
    assert one == "loading model\n"
    assert cloud.requests[-1].url.params["tail"] == "1"
    with pytest.raises(errors.NotFound, match="replica 'zz'"):
        client.deployments.logs("web", replica="zz")


def test_tokens_and_workspaces(client: Client, cloud: FakeCloud) -> None:
    token = client.tokens.create("ci", Role.viewer)
    assert token.token and token.role == Role.viewer and token.workspace == "default"
    assert {t.name for t in client.tokens.list()} == {"admin", "ci"}
    client.tokens.delete("ci")
    assert {t.name for t in client.tokens.list()} == {"admin"}
    with pytest.raises(errors.NotFound):
        client.tokens.delete("ci")

    team = client.workspaces.create("team-a")
    assert team.name == "team-a" and not team.operator
    assert {w.name for w in client.workspaces.list()} == {"default", "team-a"}
    foreign = client.tokens.create("boss", "admin", workspace="team-a")
    assert foreign.workspace == "team-a"
    assert cloud.requests[-1].url.path == "/api/v1/workspaces/team-a/tokens"

    # Tenancy: the new workspace's token does not see the default workspace's deployment.
    client.deployments.create("web", "embeddings")
    with Client(BASE, foreign.token, transport=cloud.transport) as other:
        assert other.deployments.list() == []
        with pytest.raises(errors.NotFound):
            other.deployments.get("web")
        with pytest.raises(errors.PermissionDenied):
            other.workspaces.create("sneaky")
        assert [w.name for w in other.workspaces.list()] == ["team-a"]


def test_nodes_and_shapes(client: Client, cloud: FakeCloud) -> None:
    node = client.nodes.create(
        "gpu-1", cpu_milli=32000, memory_mib=256000,
        gpus=[GpuSpec(type="H100", count=2, memory_mib=81559), {"type": "H100", "count": 1,
                                                              "memory_mib": 81559}],
        labels={"zone": "a"}, backend="fake",
    )
    assert [g.type for g in node.gpus] == ["H100", "H100", "H100"]
    assert client.nodes.get("gpu-1").labels == {"zone": "a"}
    assert client.nodes.cordon("gpu-1").status == NodeStatus.cordoned
    assert json.loads(cloud.requests[-1].content) == {"status": "cordoned"}
    assert client.nodes.uncordon("gpu-1").status == NodeStatus.ready
    assert {n.name for n in client.nodes.list()} == {"local", "gpu-1"}
    client.nodes.delete("gpu-1")
    with pytest.raises(errors.NotFound):
        client.nodes.get("gpu-1")

    shape = client.shapes.create("gpu.half", cpu_milli=2000, memory_mib=8192,
                                 gpu_milli=500, gpu_type="A10", price_per_hour_usd=0.4)
    assert shape.gpu_milli == 500 and client.shapes.get("gpu.half") == shape
    assert "gpu.half" in {s.name for s in client.shapes.list()}


def test_usage_bill(client: Client) -> None:
    client.deployments.create("web", "embeddings")
    bill = client.usage.bill()
    assert bill.workspace == "default"
    assert [line.name for line in bill.lines] == ["web"]
    assert bill.total_usd == pytest.approx(sum(line.cost_usd for line in bill.lines))
