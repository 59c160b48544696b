"""The gateway's route table built from Core rows of the columns a route needs resolves
exactly the routes the ORM rows of every deployment, replica and node gave.

The reference below (:func:`orm_routes`) is the route table's build as it was before the
rows: every live replica, deployment and node read as ORM objects. Both are run on one
varied fleet (ready, starting, stopped, failed and crashed replicas, old generations,
replicas without a port or a node, simulated and real nodes, a node not ready, scaled to
zero, waking from zero, deleting, several workspaces, a budget refusal), on SQLite and
PostgreSQL, the whole table and a rebuild of some deployments.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import delete, event, select, update

from neocloud.gateway.types import Route, Upstream, openai_paths_of
from neocloud.server import gateway_host
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, Node, Replica, Workspace
from neocloud.server.gateway_host import DbRouteTable, last_line
from neocloud.server.services import budgets
from neocloud.server.services.deployments import autoscales_to_zero, can_wake

Table = dict[str, dict[str, Route]]


def orm_routes(db: Database, refused: dict[str, str],
               ids: Sequence[str] | None = None) -> list[Route]:
    """The routes as the ORM rows gave them (the build before the Core rows)."""
    with db.session() as s:
        q = select(Deployment).where(Deployment.status != "deleting")
        r = select(Replica).where(Replica.status.in_(("ready", "starting", "failed")))
        if ids is not None:
            q = q.where(Deployment.id.in_(ids))
            r = r.where(Replica.deployment_id.in_(ids))
        deps = s.scalars(q).all()
        reps = s.scalars(r).all()
        nodes = {n.id: n for n in s.scalars(select(Node))}
        workspace_names = {w.id: w.name for w in s.scalars(select(Workspace))}
        ready = [r for r in reps if r.status == "ready"]
        generation = {d.id: d.generation for d in deps}
        crashed: dict[str, str] = {}
        for rep in reps:
            if rep.restarts > 0 and rep.status != "ready" \
                    and rep.generation == generation.get(rep.deployment_id):
                crashed.setdefault(rep.deployment_id, last_line(rep.message))
        ups: dict[str, list[Upstream]] = {}
        for rep in ready:
            node = nodes.get(rep.node_id or "")
            if node is None or rep.port is None or node.backend == "fake":
                continue
            ups.setdefault(rep.deployment_id, []).append(
                Upstream(replica_id=rep.id, url=f"http://{node.address}:{rep.port}"))
        out: list[Route] = []
        for d in deps:
            failed = crashed.get(d.id)
            out.append(Route(
                deployment_id=d.id, workspace_id=d.workspace_id, name=d.name,
                upstreams=tuple(ups.get(d.id, ())), can_wake=can_wake(d),
                refusal=refused.get(d.workspace_id),
                wake_timeout_s=d.cold_start_timeout_s,
                wake_error=(f"deployment '{d.name}' failed to start: {failed}"
                            if failed is not None and d.id not in ups else None),
                scaled_to_zero=d.replicas == 0 and not can_wake(d),
                serves=openai_paths_of(d.service, d.engine),
                created=int(d.created_at.timestamp()), owner=workspace_names[d.workspace_id],
            ))
        return out


def as_table(routes: Sequence[Route]) -> Table:
    """Workspace -> name -> route, each route's upstreams in replica id order (the ORM
    build kept the database's order, which no statement fixed)."""
    out: Table = {}
    for r in routes:
        ups = tuple(sorted(r.upstreams, key=lambda u: u.replica_id))
        out.setdefault(r.workspace_id, {})[r.name] = dataclasses.replace(r, upstreams=ups)
    return out


_n = iter(range(10_000))


def _id(prefix: str) -> str:
    return f"{prefix}{next(_n):031d}"[:32]


def varied_fleet(db: Database) -> dict[str, str]:
    """Three workspaces of varied deployments; returns name -> id of what tests change
    (``<workspace>/<deployment>`` for deployments, node names for nodes)."""
    ids: dict[str, str] = {}
    with db.session() as s:
        nodes = {
            "real-a": Node(id=_id("n"), name="real-a", backend="local", address="10.0.0.1",
                           cpu_milli=64000, memory_mib=65536),
            "real-b": Node(id=_id("n"), name="real-b", backend="local", address="10.0.0.2",
                           cpu_milli=64000, memory_mib=65536),
            "down": Node(id=_id("n"), name="down", backend="local", address="10.0.0.3",
                         status="not_ready", cpu_milli=64000, memory_mib=65536),
            "sim": Node(id=_id("n"), name="sim", backend="fake", address="127.0.0.1",
                        cpu_milli=64000, memory_mib=65536),
        }
        s.add_all(nodes.values())
        ids.update({k: n.id for k, n in nodes.items()})
        port = iter(range(20000, 30000))

        def rep(dep: Deployment, status: str, node: str | None, *, gen: int | None = None,
                restarts: int = 0, message: str | None = None, has_port: bool = True,
                node_id: str | None = None) -> None:
            s.add(Replica(
                id=_id("r"), deployment_id=dep.id, workspace_id=dep.workspace_id,
                generation=dep.generation if gen is None else gen, status=status,
                node_id=node_id or (nodes[node].id if node else None),
                port=next(port) if has_port else None, restarts=restarts,
                message=message))

        for w in ("ws-a", "ws-b", "ws-c"):
            ws = Workspace(id=_id("w"), name=w)
            s.add(ws)
            ids[w] = ws.id

            def dep(name: str, **kw: Any) -> Deployment:
                d = Deployment(id=_id("d"), workspace_id=ws.id, name=name,  # noqa: B023
                               service=kw.pop("service", "embeddings"), shape="cpu.small",
                               status=kw.pop("status", "ready"),
                               generation=kw.pop("generation", 1), **kw)
                s.add(d)
                ids[f"{w}/{name}"] = d.id  # noqa: B023
                return d

            s.flush()
            d = dep("mixed", replicas=6, generation=2, cold_start_timeout_s=30.0)
            for st, node in (("ready", "real-a"), ("ready", "real-b"), ("ready", "down"),
                             ("starting", "real-a"), ("stopped", "real-b"),
                             ("stopping", "real-a"), ("pending", None)):
                rep(d, st, node)
            rep(d, "ready", "real-a", gen=1)  # an old generation still serving
            d = dep("simulated", replicas=2)
            rep(d, "ready", "sim")
            rep(d, "ready", "sim")
            dep("zero", replicas=0)
            dep("wakes", replicas=0,
                autoscaling={"min_replicas": 0, "max_replicas": 2})
            d = dep("woken", replicas=1,
                    autoscaling={"min_replicas": 0, "max_replicas": 2})
            rep(d, "starting", "real-a")
            d = dep("autoscaled", replicas=1,
                    autoscaling={"min_replicas": 1, "max_replicas": 3})
            rep(d, "ready", "real-b")
            dep("empty-autoscaling", replicas=0, autoscaling={})
            d = dep("deleting", status="deleting", replicas=1)
            rep(d, "ready", "real-a")
            d = dep("crashed", replicas=1, generation=3, status="pending")
            rep(d, "starting", "real-a", restarts=2,
                message="Traceback (most recent call last):\n  ...\nValueError: boom\n")
            rep(d, "failed", "real-b", gen=2, restarts=1, message="old crash")
            d = dep("crashed-quietly", replicas=1, status="pending")
            rep(d, "failed", "real-a", restarts=1, message=None)
            d = dep("crashed-but-serving", replicas=2)
            rep(d, "starting", "real-a", restarts=4, message="OSError: port in use")
            rep(d, "ready", "real-b")
            d = dep("restarted-ready", replicas=1)
            rep(d, "ready", "real-b", restarts=3, message="was bad once")
            d = dep("odd", replicas=3)
            rep(d, "ready", "real-a", has_port=False)
            rep(d, "ready", None)
            rep(d, "ready", None, node_id=_id("n"))  # its node is gone
            d = dep("vllm", service=None, engine="vllm", model="m", replicas=1)
            rep(d, "ready", "real-a")
            dep("own-service", service="my.module:Service", replicas=0)
            dep("pending", status="pending", replicas=1)
        s.commit()
    return ids


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def refused(db: Database, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A budget refusal for workspace ``ws-b`` (made up: the refusals are read as before)."""
    found: dict[str, str] = {}
    monkeypatch.setattr(budgets, "refusals", lambda _s, now=None: dict(found))
    return found


def test_the_whole_table_is_the_one_the_orm_rows_gave_on_a_varied_fleet(
        db: Database, refused: dict[str, str]) -> None:
    ids = varied_fleet(db)
    refused[ids["ws-b"]] = "budget reached: 10.00 of 10.00 USD"
    table = DbRouteTable(db)
    table.refresh()
    want = as_table(orm_routes(db, refused))
    assert table._routes == want
    assert table.refreshes == [None]
    # what the fleet holds reaches every kind of route (the comparison is not vacuous)
    a = table._routes[ids["ws-a"]]
    assert "deleting" not in a and "pending" in a
    assert [u.url.rsplit(":", 1)[0] for u in a["mixed"].upstreams] == [
        "http://10.0.0.1", "http://10.0.0.2", "http://10.0.0.3", "http://10.0.0.1"]
    assert a["simulated"].upstreams == () and a["odd"].upstreams == ()
    assert a["zero"].scaled_to_zero and not a["zero"].can_wake
    assert a["wakes"].can_wake and not a["wakes"].scaled_to_zero
    assert a["empty-autoscaling"].scaled_to_zero
    assert a["crashed"].wake_error == "deployment 'crashed' failed to start: ValueError: boom"
    assert a["crashed-quietly"].wake_error is not None
    assert a["crashed-but-serving"].wake_error is None
    assert a["restarted-ready"].wake_error is None
    assert a["vllm"].serves is None and a["mixed"].serves is not None
    assert a["mixed"].wake_timeout_s == 30.0
    assert {r.refusal for r in table._routes[ids["ws-b"]].values()} == {refused[ids["ws-b"]]}
    assert {r.refusal for r in a.values()} == {None}
    # the OpenAI model object's owned_by and created: the workspace's name, the creation
    assert {r.owner for r in a.values()} == {"ws-a"}
    with db.session() as s:
        made = s.scalar(select(Deployment.created_at).where(Deployment.id == ids["ws-a/vllm"]))
    assert made is not None and a["vllm"].created == int(made.timestamp()) > 0
    assert len(table._routes) == 3
    assert all(table._where[r.deployment_id] == (w, n)
               for w, t in table._routes.items() for n, r in t.items())


def test_a_rebuild_of_some_deployments_gives_the_routes_the_orm_rows_gave(
        db: Database, refused: dict[str, str]) -> None:
    ids = varied_fleet(db)
    table = DbRouteTable(db)
    table.refresh()
    # changes to four deployments: a replica ready, a crash, deleting, deleted; and one
    # created
    changed = [ids["ws-a/woken"], ids["ws-b/crashed-but-serving"], ids["ws-c/mixed"],
               ids["ws-a/autoscaled"]]
    with db.session() as s:
        s.execute(update(Replica).where(Replica.deployment_id == ids["ws-a/woken"])
                  .values(status="ready"))
        s.execute(update(Replica).where(
            Replica.deployment_id == ids["ws-b/crashed-but-serving"],
            Replica.status == "ready").values(status="stopped"))
        s.execute(update(Deployment).where(Deployment.id == ids["ws-c/mixed"])
                  .values(status="deleting"))
        s.execute(delete(Replica).where(Replica.deployment_id == ids["ws-a/autoscaled"]))
        s.execute(delete(Deployment).where(Deployment.id == ids["ws-a/autoscaled"]))
        new = Deployment(id=_id("d"), workspace_id=ids["ws-c"], name="new",
                         service="embeddings", shape="cpu.small", replicas=1)
        s.add(new)
        s.flush()
        s.add(Replica(id=_id("r"), deployment_id=new.id, workspace_id=ids["ws-c"],
                      generation=1, status="ready", node_id=ids["real-b"], port=31000))
        changed.append(new.id)
        s.commit()
    table.refresh(changed)
    assert table.refreshes == [None, len(changed)]
    assert table._routes == as_table(orm_routes(db, refused))
    assert table._routes[ids["ws-a"]]["woken"].upstreams
    assert table._routes[ids["ws-b"]]["crashed-but-serving"].wake_error is not None
    assert "mixed" not in table._routes[ids["ws-c"]]
    assert "autoscaled" not in table._routes[ids["ws-a"]]
    assert set(table._where) == {r.deployment_id for t in table._routes.values()
                                 for r in t.values()}
    # the rows of the partial read are those of the ORM read of the same deployments
    with db.session() as s:
        rows = gateway_host.read_route_rows(s, changed)
    assert as_table(gateway_host.routes_of(rows, refused)) == as_table(
        orm_routes(db, refused, changed))


@pytest.mark.parametrize("autoscaling", [
    None, {}, {"min_replicas": 0, "max_replicas": 1}, {"min_replicas": 1},
    {"min_replicas": 2, "max_replicas": 5}, {"max_replicas": 3}])
def test_autoscales_to_zero_is_can_wake_of_a_live_deployment(
        autoscaling: dict[str, Any] | None) -> None:
    dep = Deployment(autoscaling=autoscaling, status="ready")
    assert autoscales_to_zero(autoscaling) is can_wake(dep)


def test_a_whole_rebuild_reads_only_the_columns_a_route_needs(
        db: Database, refused: dict[str, str]) -> None:
    varied_fleet(db)
    seen: list[str] = []

    def on_execute(_conn: Any, _cur: Any, sql: str, *_a: Any) -> None:
        seen.append(" ".join(sql.split()))

    event.listen(db.engine, "before_cursor_execute", on_execute)
    try:
        DbRouteTable(db).refresh()
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)
    selects = [q for q in seen if q.upper().startswith("SELECT")]
    assert len(selects) == 3  # deployments, ready replicas with their nodes, crashes
    # no whole row: not the columns no route reads (a replica's handle, a spec's env)
    for col in ("handle", "gpu_indices", "env", "secrets", "labels", "heartbeat_at"):
        assert not any(re.search(rf"\.{col}\b", q) for q in selects), col
    # the message of a replica only where it crashed while starting
    assert all("restarts >" in q for q in selects if "replicas.message" in q)
