"""Cost of placing one replica on a large fleet: reading the whole inventory per placement
(what placement did before the kept inventory) against the kept inventory.

Fills a database of its own with ``--nodes`` simulated nodes and ``--allocations``
allocations spread over them, then times ``--placements`` placements each way, every one
in its own transaction under the placement lock, as the reconcilers place:

* ``full read``: every node and every allocation read into a snapshot, then the scheduler
  (``inventory.snapshot`` + ``scheduler.place``), the cost of each placement before;
* ``kept inventory``: ``placement.schedule`` (admission, the kept index, the chosen node
  read again), after one warm-up placement that builds the index;
* ``rebuild of the kept inventory``: what the kept inventory reads every
  ``inventory.REBUILD_S`` seconds (and before any "no room"): every node and what the
  allocations hold (``Inventory.rebuild``). Before, it read every node and allocation as
  rows, as the full read does.

Prints the load average, a table, then one JSON line.

Usage: python benchmarks/fleet/placement_cost.py [--db postgresql|sqlite] [--nodes 5000]
       [--allocations 50000] [--placements 50] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select

from neocloud.models import NodeCreate
from neocloud.server.bootstrap import bootstrap
from neocloud.server.db.engine import Database, migrate
from neocloud.server.db.tables import Allocation, Deployment, Node, Replica, Workspace
from neocloud.server.scheduler import ResourceRequest, place
from neocloud.server.services import inventory, placement
from neocloud.server.services import nodes as node_svc
from neocloud.server.services import shapes as shape_svc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import NODE_CPU_MILLI, NODE_GPUS, NODE_MEMORY_MIB, PgDatabase, pct  # noqa: E402

REQUEST = ResourceRequest(cpu_milli=500, memory_mib=2048)
"""One ``cpu.small`` replica."""


def fill(db: Database, nodes: int, allocations: int) -> str:
    """Schema, nodes, and ``allocations`` CPU allocations round-robin over the nodes, each
    owned by a replica row; returns the workspace id."""
    migrate(db.engine)
    with db.session() as s:
        shape_svc.ensure_defaults(s)
    bootstrap(db)
    with db.session() as s:
        for i in range(nodes):
            node_svc.create_node(s, spec=NodeCreate.model_validate({
                "name": f"n{i:05d}", "cpu_milli": NODE_CPU_MILLI,
                "memory_mib": NODE_MEMORY_MIB, "gpus": NODE_GPUS, "backend": "fake"}))
    with db.session() as s:
        ws = s.scalars(select(Workspace.id)).one()
        node_ids = list(s.scalars(select(Node.id).order_by(Node.name)))
        dep = Deployment(workspace_id=ws, name="filler", service="embeddings",
                         shape="cpu.small", replicas=allocations)
        s.add(dep)
        s.flush()
        dep_id = dep.id
    batch = 5000
    for start in range(0, allocations, batch):
        ids = [f"{i:032x}" for i in range(start, min(allocations, start + batch))]
        with db.session() as s:
            s.execute(insert(Replica), [
                {"id": rid, "deployment_id": dep_id, "workspace_id": ws, "generation": 1,
                 "status": "ready", "node_id": node_ids[int(rid, 16) % nodes]}
                for rid in ids])
            s.execute(insert(Allocation), [
                {"id": "a" + rid[1:], "workspace_id": ws, "kind": "replica",
                 "owner_id": rid, "replica_id": rid,
                 "node_id": node_ids[int(rid, 16) % nodes], "gpu_indices": [],
                 "gpu_milli": 0, "cpu_milli": REQUEST.cpu_milli,
                 "memory_mib": REQUEST.memory_mib} for rid in ids])
    return ws


def time_full_read(db: Database, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with db.session() as s:
            placement.lock_placement(s)
            nodes = inventory.snapshot(s)
            place(nodes, REQUEST)
            s.rollback()
        out.append(time.perf_counter() - t0)
    return out


def time_kept(db: Database, ws: str, n: int) -> list[float]:
    with db.session() as s:  # warm-up: builds the kept index
        placement.schedule(s, workspace_id=ws, requests=[REQUEST])
        s.rollback()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with db.session() as s:
            placement.schedule(s, workspace_id=ws, requests=[REQUEST])
            s.rollback()
        out.append(time.perf_counter() - t0)
    return out


def time_rebuild(db: Database, n: int) -> list[float]:
    out = []
    inv = inventory.Inventory(policy="default")
    for _ in range(n):
        t0 = time.perf_counter()
        with db.session() as s:
            placement.lock_placement(s)
            inv.rebuild(s)
            s.rollback()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--allocations", type=int, default=50000)
    ap.add_argument("--placements", type=int, default=50)
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)",
          flush=True)
    pg = PgDatabase(args.pg_url, f"bench_fleet_place_{os.getpid()}") \
        if args.db == "postgresql" else None
    if pg is not None:
        pg.create()
        url = pg.url
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='neocloud-place-')) / 'p.db'}"
    db = Database(url)
    try:
        ws = fill(db, args.nodes, args.allocations)
        full = time_full_read(db, max(3, args.placements // 10))
        kept = time_kept(db, ws, args.placements)
        rebuild = time_rebuild(db, max(3, args.placements // 10))
    finally:
        db.dispose()
        if pg is not None:
            pg.drop()
    rows = [("full read (before)", full), ("kept inventory (after)", kept),
            ("rebuild of the kept inventory", rebuild)]
    print(f"{args.db}: {args.nodes} nodes, {args.allocations} allocations")
    print(f"{'way':30}  {'placements':>10}  {'p50 ms':>8}  {'p99 ms':>8}")
    for name, xs in rows:
        print(f"{name:30}  {len(xs):>10}  {1000 * statistics.median(xs):8.1f}  "
              f"{1000 * (pct(xs, 99) or 0):8.1f}")
    ratio = statistics.median(full) / statistics.median(kept)
    print(f"speed-up (p50): {ratio:.0f}x")
    print(json.dumps({"bench": "fleet-placement", "db": args.db, "nodes": args.nodes,
                      "allocations": args.allocations, "load_avg": list(load),
                      "full_read_p50_s": statistics.median(full),
                      "kept_p50_s": statistics.median(kept),
                      "kept_p99_s": pct(kept, 99), "speedup_p50": ratio,
                      "rebuild_p50_s": statistics.median(rebuild),
                      "rebuild_vs_full_read_p50": statistics.median(full)
                      / statistics.median(rebuild)}))


if __name__ == "__main__":
    main()
