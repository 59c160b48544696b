"""The invariant checker: reads the database (one consistent snapshot) and the backends,
and reports every broken promise of the control plane. It reports; it never repairs.

The invariants are those of :class:`neocloud.models.admin.Invariant`, kept by the
reconciler core (``server/reconcilers/core.py``; ``server/reconcilers/README.md`` says
how). Operators run it with ``neocloud admin check`` (``GET /api/v1/admin/check``); the
concurrency tests run it after every burst of concurrent calls and while calls run.

Backends are asked about processes through the :class:`~neocloud.server.backends.base.Backend`
interface (``inspect`` a recorded handle). A backend that can also list the workload ids
it runs (``workload_ids() -> Iterable[str]``, optional; the fake backend does) lets the
checker find processes whose handle was never recorded or whose workload row is gone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.models.admin import CheckReport, Invariant, Violation
from neocloud.models.deployments import DeploymentStatus, ReplicaStatus
from neocloud.models.jobs import JobStatus, WorkerStatus
from neocloud.models.pods import PodStatus
from neocloud.server.backends.base import Backend
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import (
    Allocation,
    Deployment,
    Event,
    Job,
    JobWorker,
    Node,
    Pod,
    Quota,
    Replica,
)
from neocloud.server.services.lifecycle import (
    HOLDS,
    JOB_IDLE,
    MAY_RUN,
    NEEDS_ALLOCATION,
    allowed,
)

MILLI = 1000


@contextmanager
def snapshot_session(db: Database) -> Iterator[Session]:
    """A read-only session that sees one consistent snapshot of the whole database.

    PostgreSQL: a ``REPEATABLE READ`` transaction. SQLite (WAL): one explicit read
    transaction (the driver would otherwise run each ``SELECT`` on its own, each seeing a
    different moment).
    """
    with db.session() as s:
        if db.is_postgres:
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        else:
            s.connection().exec_driver_sql("BEGIN")
        try:
            yield s
        finally:
            s.rollback()


def check_database(db: Database, backends: Mapping[str, Backend] | None = None) -> CheckReport:
    """:func:`check` over one snapshot of ``db``; with ``backends``, processes too."""
    with snapshot_session(db) as s:
        return check(s, backends=backends)


def check(s: Session, *, backends: Mapping[str, Backend] | None = None) -> CheckReport:
    """Every broken invariant visible in the session's data (and, with ``backends``, in
    the processes they run).

    Without ``backends`` only the database is read (cheap enough to sample while calls
    run). Returns a report listing every violation found; ``ok`` when there is none.
    """
    out: list[Violation] = []
    allocs = list(s.scalars(select(Allocation)))
    replicas = {r.id: r for r in s.scalars(select(Replica))}
    workers = {w.id: w for w in s.scalars(select(JobWorker))}
    pods = {p.id: p for p in s.scalars(select(Pod))}
    jobs = {j.id: j for j in s.scalars(select(Job))}
    deps = {d.id: d for d in s.scalars(select(Deployment))}
    nodes = {n.id: n for n in s.scalars(select(Node))}
    owners: dict[str, Mapping[str, Any]] = {"replica": replicas, "job": workers, "pod": pods}

    _allocation_owners(allocs, owners, out)
    _allocation_missing(allocs, owners, out)
    _quotas(s, allocs, out)
    _node_capacity(allocs, nodes, out)
    _finished_jobs(jobs, workers, out)
    _history(s, {**deps, **replicas, **jobs, **workers, **pods}, out)
    if backends is not None:
        _processes(backends, nodes, replicas, workers, pods, jobs, out)
    counts = {"allocations": len(allocs), "deployments": len(deps), "replicas": len(replicas),
              "jobs": len(jobs), "job_workers": len(workers), "pods": len(pods),
              "nodes": len(nodes)}
    return CheckReport(ok=not out, checked_at=datetime.now(UTC), counts=counts, violations=out)


def _v(out: list[Violation], inv: Invariant, kind: str, object_id: str,
       workspace_id: str | None, message: str) -> None:
    out.append(Violation(invariant=inv, kind=kind, object_id=object_id,
                         workspace_id=workspace_id, message=message))


def _allocation_owners(allocs: list[Allocation], owners: Mapping[str, Mapping[str, Any]],
                       out: list[Violation]) -> None:
    for a in allocs:
        table = owners.get(a.kind)
        owner = table.get(a.owner_id) if table is not None else None
        if owner is None:
            _v(out, Invariant.allocation_owner, "allocation", a.id, a.workspace_id,
               f"allocation of {a.kind} {a.owner_id} has no owner "
               f"({a.gpu_milli * len(a.gpu_indices) / MILLI:g} GPUs held)")
        elif owner.status not in HOLDS[a.kind]:
            _v(out, Invariant.allocation_owner, "allocation", a.id, a.workspace_id,
               f"allocation of {a.kind} {a.owner_id}, which is {owner.status}")


def _allocation_missing(allocs: list[Allocation], owners: Mapping[str, Mapping[str, Any]],
                        out: list[Violation]) -> None:
    held = {(a.kind, a.owner_id) for a in allocs}
    for kind, rows in owners.items():
        for row in rows.values():
            if row.status in NEEDS_ALLOCATION[kind] and (kind, row.id) not in held:
                _v(out, Invariant.allocation_missing, _kind_name(kind), row.id,
                   row.workspace_id, f"{_kind_name(kind)} {row.id} is {row.status} "
                                     "without an allocation")


def _kind_name(alloc_kind: str) -> str:
    return "job_worker" if alloc_kind == "job" else alloc_kind


def _quotas(s: Session, allocs: list[Allocation], out: list[Violation]) -> None:
    by_ws: dict[str, list[Allocation]] = defaultdict(list)
    for a in allocs:
        by_ws[a.workspace_id].append(a)
    for q in s.scalars(select(Quota)):
        mine = by_ws.get(q.workspace_id, [])
        gpu_by_type: dict[str, int] = defaultdict(int)
        for a in mine:
            if a.gpu_indices:
                gpu_by_type[a.gpu_type or "?"] += a.gpu_milli * len(a.gpu_indices)
        total = sum(gpu_by_type.values())
        problems = []
        if q.gpus_total is not None and total > q.gpus_total * MILLI:
            problems.append(f"{total / MILLI:g}/{q.gpus_total} GPUs")
        limits = dict(q.gpus or {})
        for t, used in gpu_by_type.items():
            limit = limits.get(t, limits.get("*"))
            if limit is not None and used > int(limit) * MILLI:
                problems.append(f"{used / MILLI:g}/{limit} {t} GPUs")
        cpu = sum(a.cpu_milli for a in mine)
        if q.cpu_milli is not None and cpu > q.cpu_milli:
            problems.append(f"{cpu}/{q.cpu_milli} millicores")
        mem = sum(a.memory_mib for a in mine)
        if q.memory_mib is not None and mem > q.memory_mib:
            problems.append(f"{mem}/{q.memory_mib} MiB")
        for p in problems:
            _v(out, Invariant.quota, "workspace", q.workspace_id, q.workspace_id,
               f"allocations hold {p}, over the quota")


#: Why a node may hold more than it has, said with each node_capacity violation: the
#: control plane never books beyond a node's room, but a node that joins again smaller
#: keeps the work it runs (``scheduler.types.NodeSnapshot``).
SHRUNK = ("; if the node joined again smaller, its work keeps running and it takes no new "
          "work until enough of it ends")


def _node_capacity(allocs: list[Allocation], nodes: Mapping[str, Node],
                   out: list[Violation]) -> None:
    by_node: dict[str, list[Allocation]] = defaultdict(list)
    for a in allocs:
        by_node[a.node_id].append(a)
    for node_id, mine in by_node.items():
        node = nodes.get(node_id)
        if node is None:
            _v(out, Invariant.node_capacity, "node", node_id, None,
               f"{len(mine)} allocation(s) on a node that does not exist")
            continue
        indices = {g["index"] for g in node.gpus}
        used: dict[int, int] = defaultdict(int)
        for a in mine:
            for i in a.gpu_indices:
                used[i] += a.gpu_milli
        for i, milli in sorted(used.items()):
            if i not in indices:
                _v(out, Invariant.node_capacity, "node", node.id, None,
                   f"node {node.name}: GPU {i} is allocated but the node has no such GPU"
                   f"{SHRUNK}")
            elif milli > MILLI:
                _v(out, Invariant.node_capacity, "node", node.id, None,
                   f"node {node.name}: GPU {i} allocated {milli}/1000 milli-GPU")
        cpu = sum(a.cpu_milli for a in mine)
        if cpu > node.cpu_milli:
            _v(out, Invariant.node_capacity, "node", node.id, None,
               f"node {node.name}: {cpu}/{node.cpu_milli} millicores allocated{SHRUNK}")
        mem = sum(a.memory_mib for a in mine)
        if mem > node.memory_mib:
            _v(out, Invariant.node_capacity, "node", node.id, None,
               f"node {node.name}: {mem}/{node.memory_mib} MiB allocated{SHRUNK}")


def _finished_jobs(jobs: Mapping[str, Job], workers: Mapping[str, JobWorker],
                   out: list[Violation]) -> None:
    for w in workers.values():
        job = jobs.get(w.job_id)
        if job is not None and job.status in JOB_IDLE and w.status in MAY_RUN["job"]:
            _v(out, Invariant.not_wanted_running, "job", job.id, job.workspace_id,
               f"job {job.name} is {job.status} but its worker {w.rank} (attempt "
               f"{w.attempt}) is {w.status}")


_ENUM_OF: dict[type, type[StrEnum]] = {
    Deployment: DeploymentStatus, Replica: ReplicaStatus, Job: JobStatus,
    JobWorker: WorkerStatus, Pod: PodStatus,
}


def _history(s: Session, rows: Mapping[str, Any], out: list[Violation]) -> None:
    """Status events (those naming the status entered) follow the transitions, and the
    newest one names the row's status."""
    if "status" not in Event.__table__.c:
        return
    seq: dict[str, list[str]] = defaultdict(list)
    for oid, status in s.execute(
        select(Event.object_id, Event.status).where(Event.status.is_not(None))
        .order_by(Event.id)
    ):
        if oid and status:
            seq[oid].append(status)
    for oid, statuses in seq.items():
        row = rows.get(oid)
        if row is None:
            continue
        enum = _ENUM_OF[type(row)]
        kind = type(row).__tablename__.rstrip("s")
        for old, new in zip(statuses, statuses[1:], strict=False):
            if not allowed(enum, old, new):
                _v(out, Invariant.status_history, kind, oid, row.workspace_id,
                   f"{kind} {oid}: status events go {old} -> {new}, which is not allowed")
        if statuses[-1] != row.status:
            _v(out, Invariant.status_history, kind, oid, row.workspace_id,
               f"{kind} {oid} is {row.status} but its newest status event says "
               f"{statuses[-1]}")


def _processes(backends: Mapping[str, Backend], nodes: Mapping[str, Node],
               replicas: Mapping[str, Replica], workers: Mapping[str, JobWorker],
               pods: Mapping[str, Pod], jobs: Mapping[str, Job],
               out: list[Violation]) -> None:
    """Processes of workloads that should have none. A backend that lists its workload
    ids is asked once; any other is asked about each recorded handle (``inspect``), so
    the cost stays one call per row, whatever the history holds."""
    listed: dict[str, set[str]] = {}
    for name, be in backends.items():
        lister = getattr(be, "workload_ids", None)
        if lister is not None:
            listed[name] = set(lister())
    known: set[str] = set()

    def runs(row: Any) -> bool:
        node = nodes.get(row.node_id) if row.node_id else None
        names = [node.backend] if node is not None and node.backend in backends \
            else list(backends)
        for name in names:
            if name in listed:
                if row.id in listed[name]:
                    return True
            elif row.handle and backends[name].inspect(dict(row.handle)).running:
                return True
        return False

    groups: tuple[tuple[str, Mapping[str, Any]], ...] = (
        ("replica", replicas), ("job", workers), ("pod", pods))
    for kind, rows in groups:
        for row in rows.values():
            known.add(row.id)
            want = row.status in MAY_RUN[kind]
            if kind == "job":
                job = jobs.get(row.job_id)
                want = want and job is not None and job.status not in JOB_IDLE
            if not want and runs(row):
                _v(out, Invariant.not_wanted_running, _kind_name(kind), row.id,
                   row.workspace_id, f"a process runs for {_kind_name(kind)} {row.id}, "
                                     f"which is {row.status}")
    for name, ids in listed.items():
        for wid in sorted(ids - known):
            _v(out, Invariant.not_wanted_running, "process", wid, None,
               f"backend {name} runs a process for workload {wid}, which no longer exists")
