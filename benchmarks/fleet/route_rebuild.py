"""Cost of one whole rebuild of the gateway's route table on a large settled fleet: every
deployment, live replica and node read as ORM objects (the rebuild before) against the
Core rows of only the columns a route needs (``DbRouteTable.refresh`` now).

Fills a database of its own with ``--nodes`` nodes and ``--deployments`` deployments of
``--replicas`` ready replicas each, spread over the nodes, then times ``--rebuilds``
whole rebuilds each way, in process. ``--backend fake`` (the fleet benchmark's simulated
nodes: no replica has a URL, so no route has an upstream) or ``local`` (every ready
replica is an upstream: the most a rebuild reads). Checks that both ways give the same
table.

Prints the load average, a table, then one JSON line.

Usage: python benchmarks/fleet/route_rebuild.py [--db postgresql|sqlite] [--nodes 5000]
       [--deployments 5000] [--replicas 10] [--rebuilds 5] [--backend fake|local]
       [--pg-url URL]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert, select

from neocloud.gateway.types import Route, Upstream, openai_paths_of
from neocloud.server.bootstrap import bootstrap
from neocloud.server.db.engine import Database, migrate
from neocloud.server.db.tables import Deployment, Node, Replica, Workspace
from neocloud.server.gateway_host import DbRouteTable, last_line
from neocloud.server.services import budgets
from neocloud.server.services import shapes as shape_svc
from neocloud.server.services.deployments import can_wake

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import NODE_CPU_MILLI, NODE_MEMORY_MIB, PgDatabase  # noqa: E402


def fill(db: Database, nodes: int, deployments: int, replicas: int, backend: str) -> None:
    """Schema, nodes, and ``deployments`` ready deployments of ``replicas`` ready replicas
    each, round-robin over the nodes."""
    migrate(db.engine)
    with db.session() as s:
        shape_svc.ensure_defaults(s)
    bootstrap(db)
    with db.session() as s:
        ws = s.scalars(select(Workspace.id)).one()
        node_ids = [f"n{i:031d}" for i in range(nodes)]
        s.execute(insert(Node), [
            {"id": nid, "name": f"n{i:05d}", "backend": backend,
             "address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
             "cpu_milli": NODE_CPU_MILLI, "memory_mib": NODE_MEMORY_MIB, "gpus": []}
            for i, nid in enumerate(node_ids)])
        s.execute(insert(Deployment), [
            {"id": f"d{i:031d}", "workspace_id": ws, "name": f"d{i:05d}",
             "service": "embeddings", "shape": "cpu.small", "replicas": replicas,
             "status": "ready", "generation": 1} for i in range(deployments)])
        s.commit()
    batch = 10000
    total = deployments * replicas
    for start in range(0, total, batch):
        with db.session() as s:
            s.execute(insert(Replica), [
                {"id": f"r{k:031d}", "deployment_id": f"d{k // replicas:031d}",
                 "workspace_id": ws, "generation": 1, "status": "ready",
                 "node_id": node_ids[k % nodes], "port": 20000 + k % 40000}
                for k in range(start, min(total, start + batch))])
            s.commit()


def orm_rebuild(db: Database) -> dict[str, dict[str, Route]]:
    """The whole rebuild as it was: ORM objects of every deployment, live replica and
    node, then the routes."""
    with db.session() as s:
        refused = budgets.refusals(s)
        deps = s.scalars(select(Deployment).where(Deployment.status != "deleting")).all()
        reps = s.scalars(select(Replica).where(
            Replica.status.in_(("ready", "starting", "failed")))).all()
        nodes = {n.id: n for n in s.scalars(select(Node))}
        generation = {d.id: d.generation for d in deps}
        crashed: dict[str, str] = {}
        for r in reps:
            if r.restarts > 0 and r.status != "ready" \
                    and r.generation == generation.get(r.deployment_id):
                crashed.setdefault(r.deployment_id, last_line(r.message))
        ups: dict[str, list[Upstream]] = {}
        for r in reps:
            node = nodes.get(r.node_id or "")
            if r.status != "ready" or node is None or r.port is None \
                    or node.backend == "fake":
                continue
            ups.setdefault(r.deployment_id, []).append(
                Upstream(replica_id=r.id, url=f"http://{node.address}:{r.port}"))
        table: dict[str, dict[str, Route]] = {}
        for d in deps:
            failed = crashed.get(d.id)
            table.setdefault(d.workspace_id, {})[d.name] = Route(
                deployment_id=d.id, workspace_id=d.workspace_id, name=d.name,
                upstreams=tuple(ups.get(d.id, ())), can_wake=can_wake(d),
                refusal=refused.get(d.workspace_id), wake_timeout_s=d.cold_start_timeout_s,
                wake_error=(f"deployment '{d.name}' failed to start: {failed}"
                            if failed is not None and d.id not in ups else None),
                scaled_to_zero=d.replicas == 0 and not can_wake(d),
                serves=openai_paths_of(d.service, d.engine))
        return table


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds each of ``n`` calls of ``fn`` took."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--deployments", type=int, default=5000)
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--rebuilds", type=int, default=5)
    ap.add_argument("--backend", choices=("fake", "local"), default="fake")
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    args = ap.parse_args()
    pg = PgDatabase(args.pg_url, f"bench_fleet_routes_{os.getpid()}") \
        if args.db == "postgresql" else None
    if pg is not None:
        pg.create()
        url = pg.url
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='neocloud-routes-')) / 'r.db'}"
    db = Database(url)
    try:
        fill(db, args.nodes, args.deployments, args.replicas, args.backend)
        table = DbRouteTable(db)
        load = os.getloadavg()
        before = timed(lambda: orm_rebuild(db), args.rebuilds)
        after = timed(table.refresh, args.rebuilds)
        want = orm_rebuild(db)
        same = table._routes == {
            w: {n: dataclasses.replace(r, upstreams=tuple(sorted(
                r.upstreams, key=lambda u: u.replica_id))) for n, r in t.items()}
            for w, t in want.items()}
        upstreams = sum(len(r.upstreams) for t in table._routes.values()
                        for r in t.values())
        load_end = os.getloadavg()
    finally:
        db.dispose()
        if pg is not None:
            pg.drop()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start, "
          f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end "
          f"({os.cpu_count()} CPUs)")
    print(f"{args.db}: {args.nodes} nodes ({args.backend}), {args.deployments} deployments"
          f" x {args.replicas} replicas, {upstreams} upstreams routed; same table: {same}")
    print(f"{'whole rebuild':34}  {'n':>3}  {'p50 s':>7}  {'max s':>7}")
    for name, xs in (("ORM rows (before)", before), ("Core rows of the columns (now)", after)):
        print(f"{name:34}  {len(xs):>3}  {statistics.median(xs):7.3f}  {max(xs):7.3f}")
    print(json.dumps({"bench": "fleet-route-rebuild", "db": args.db, "nodes": args.nodes,
                      "backend": args.backend, "deployments": args.deployments,
                      "replicas": args.replicas, "upstreams": upstreams,
                      "load_avg": list(load), "load_avg_end": list(load_end),
                      "orm_p50_s": statistics.median(before),
                      "core_p50_s": statistics.median(after), "same_table": same}))
    if not same:
        sys.exit("the two rebuilds gave different tables")


if __name__ == "__main__":
    main()
