"""Each resource of the SDK against the real control plane (simulated nodes, reconcilers
run by hand)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from tests.unit.sdk.realcloud import RealCloud

from neocloud import errors
from neocloud.models import DeploymentStatus, GpuSpec, NodeStatus, Role
from neocloud.models.audit import AuditOutcome
from neocloud.sdk import Client, WaitProgress


def _node(client: Client, name: str = "n1", **kw: object) -> None:
    client.nodes.create(name, cpu_milli=64000, memory_mib=262144, backend="fake", **kw)


def test_deployment_crud(client: Client, cloud: RealCloud) -> None:
    created = client.deployments.create("web", "embeddings", env={"A": "1"})
    assert created.status == DeploymentStatus.pending and created.replicas == 1
    body = json.loads(cloud.requests[-1].content)
    assert body == {"name": "web", "service": "embeddings", "shape": "cpu.small",
                    "replicas": 1, "env": {"A": "1"}, "priority": 0, "preemptible": False}
    assert [d.name for d in client.deployments.list()] == ["web"]

    updated = client.deployments.update("web", replicas=3)
    assert json.loads(cloud.requests[-1].content) == {"replicas": 3}
    assert cloud.requests[-1].method == "PATCH"
    assert updated.replicas == 3
    rolled = client.deployments.update("web", env={"A": "2"})
    assert rolled.generation == updated.generation + 1 and rolled.env == {"A": "2"}

    _node(client)
    cloud.reconcile(3)
    got = client.deployments.get("web")
    assert len(got.replica_list) == 3 and got.ready_replicas == 3

    client.deployments.delete("web")
    assert cloud.requests[-1].method == "DELETE"
    cloud.reconcile(3)
    with pytest.raises(errors.NotFound):
        client.deployments.get("web")
    assert client.deployments.list() == []


def test_wait_ready_reports_progress(client: Client, cloud: RealCloud) -> None:
    _node(client)
    client.deployments.create("web", "embeddings", replicas=2)
    seen: list[WaitProgress] = []

    def progress(p: WaitProgress) -> None:
        seen.append(p)
        cloud.reconcile()  # the control plane acts between two polls

    ready = client.deployments.wait_ready("web", timeout_s=30, poll_s=0, on_progress=progress)
    assert ready.status == DeploymentStatus.ready and ready.ready_replicas == 2
    assert seen[0].deployment.status == DeploymentStatus.pending
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(seen, seen[1:], strict=False))
    ids = [e.id for e in seen[-1].events]
    assert ids == sorted(ids)  # events come back oldest first


def test_wait_ready_stops_when_no_node_can_ever_fit(client: Client, cloud: RealCloud) -> None:
    _node(client)
    client.deployments.create("big", "embeddings", shape="gpu.h100x8")
    cloud.reconcile()
    with pytest.raises(errors.Unavailable) as info:
        client.deployments.wait_ready("big", timeout_s=30, poll_s=0)
    assert info.value.code == "unschedulable"
    assert "no node can run 8 H100 GPUs" in info.value.message


def test_wait_ready_timeout(client: Client) -> None:
    client.deployments.create("web", "embeddings")  # no node yet: it waits
    polls: list[WaitProgress] = []
    with pytest.raises(errors.Timeout) as info:
        client.deployments.wait_ready("web", timeout_s=0, poll_s=0, on_progress=polls.append)
    assert len(polls) == 1
    assert "not ready after 0 s" in info.value.message and "0/1" in info.value.message


def test_wait_ready_on_deleted_deployment(client: Client, cloud: RealCloud) -> None:
    client.deployments.create("web", "embeddings")
    client.deployments.delete("web")
    cloud.reconcile(2)
    with pytest.raises(errors.NotFound):
        client.deployments.wait_ready("web", poll_s=0)


def test_events_and_logs(client: Client, cloud: RealCloud) -> None:
    _node(client)
    client.deployments.create("web", "embeddings", replicas=2)
    cloud.reconcile(2)
    events = client.deployments.events("web")
    assert events and events[0].reason == "Created"
    assert "Scheduled" in {e.reason for e in events}
    assert client.events.list(kind="deployment", name="web", limit=1) == events[-1:]
    query = cloud.requests[-1].url.params
    assert (query["kind"], query["name"], query["limit"]) == ("deployment", "web", "1")
    assert isinstance(client.deployments.logs("web"), str)
    assert cloud.requests[-1].url.path == "/api/v1/deployments/web/logs"
    with pytest.raises(errors.NotFound, match="replica 'zz'"):
        client.deployments.logs("web", replica="zz")


def test_tokens_and_workspaces(client: Client, cloud: RealCloud) -> None:
    mine = {t.name for t in client.tokens.list()}
    token = client.tokens.create("ci", Role.viewer)
    assert token.token and token.role == Role.viewer and token.workspace == "default"
    assert {t.name for t in client.tokens.list()} == mine | {"ci"}
    client.tokens.delete("ci")
    assert {t.name for t in client.tokens.list()} == mine
    with pytest.raises(errors.NotFound):
        client.tokens.delete("ci")

    team = client.workspaces.create("team-a")
    assert team.name == "team-a" and not team.operator
    assert {w.name for w in client.workspaces.list()} == {"default", "team-a"}
    foreign = client.tokens.create("boss", "admin", workspace="team-a")
    assert foreign.workspace == "team-a"
    assert cloud.requests[-1].url.path == "/api/v1/workspaces/team-a/tokens"
    # An operator lists another workspace's tokens (names and roles, never the secret).
    listed = client.tokens.list(workspace="team-a")
    assert [(t.name, t.role, t.workspace) for t in listed] == [("boss", Role.admin, "team-a")]
    assert cloud.requests[-1].url.path == "/api/v1/workspaces/team-a/tokens"
    with pytest.raises(errors.NotFound):
        client.tokens.list(workspace="nope")

    # Tenancy: the new workspace's token does not see the default workspace's deployment.
    client.deployments.create("web", "embeddings", replicas=0)
    other = cloud.client(foreign.token)
    assert other.deployments.list() == []
    with pytest.raises(errors.NotFound):
        other.deployments.get("web")
    with pytest.raises(errors.PermissionDenied):
        other.workspaces.create("sneaky")
    with pytest.raises(errors.PermissionDenied):
        other.tokens.list(workspace="default")
    assert [w.name for w in other.workspaces.list()] == ["team-a"]


def test_nodes_shapes_and_fleet(client: Client) -> None:
    node = client.nodes.create(
        "gpu-1", cpu_milli=32000, memory_mib=256000,
        gpus=[GpuSpec(type="H100", count=2, memory_mib=81559)],
        labels={"zone": "a"}, backend="fake",
    )
    assert [g.type for g in node.gpus] == ["H100", "H100"]
    assert client.nodes.get("gpu-1").labels == {"zone": "a"}
    assert client.nodes.cordon("gpu-1").status == NodeStatus.cordoned
    assert client.nodes.uncordon("gpu-1").status == NodeStatus.ready
    assert {n.name for n in client.nodes.list()} == {"gpu-1"}
    util = client.fleet.utilization()
    assert sum(p.gpus for p in util.pools) == 2
    client.nodes.delete("gpu-1")
    with pytest.raises(errors.NotFound):
        client.nodes.get("gpu-1")

    shape = client.shapes.create("gpu.half", cpu_milli=2000, memory_mib=8192,
                                 gpu_milli=500, gpu_type="A10", price_per_hour_usd=0.4)
    assert shape.gpu_milli == 500 and client.shapes.get("gpu.half") == shape
    assert "gpu.half" in {s.name for s in client.shapes.list()}


def test_quotas_and_queue(client: Client, cloud: RealCloud) -> None:
    client.workspaces.create("team-q")
    q = client.quotas.set("team-q", gpus_total=0)
    assert q.workspace == "team-q" and q.gpus_total == 0
    assert client.quotas.get("team-q").gpus_total == 0
    assert client.quotas.get().workspace == "default"
    client.deployments.create("waits", "embeddings", shape="gpu.h100x8")
    cloud.reconcile()
    assert "waits" in {i.name for i in client.queue.list()}


def test_usage_bill(client: Client, cloud: RealCloud) -> None:
    _node(client)
    client.deployments.create("web", "embeddings")
    cloud.reconcile(2)
    bill = client.usage.bill()
    assert bill.workspace == "default"
    assert bill.total_usd == pytest.approx(sum(line.cost_usd for line in bill.lines))


def test_audit(client: Client, cloud: RealCloud) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    client.secrets.set("k", "v")
    client.secrets.delete("k")
    with pytest.raises(errors.PermissionDenied):
        cloud.client(client.tokens.create("dev", "member").token).audit.list()
    entries = client.audit.list(since=start)
    assert [(e.action, e.target, e.outcome) for e in entries if e.target == "secrets/k"] == [
        ("set_secret", "secrets/k", AuditOutcome.success),
        ("delete_secret", "secrets/k", AuditOutcome.success)]
    assert any(e.action == "list_audit" and e.outcome == AuditOutcome.denied
               and e.token_name == "dev" for e in client.audit.list())
    assert len(client.audit.list(limit=1)) == 1
    assert client.audit.list(since=datetime.now(UTC) + timedelta(hours=1)) == []
