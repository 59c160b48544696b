"""Metrics history: fixed-resolution time series of deployments and nodes, in the database.

Two resolutions are kept, each with a bounded retention (:data:`RESOLUTIONS`): 10-second
buckets for a day and 5-minute buckets for 31 days, so a series holds at most
8,640 + 8,928 rows whatever the load. Every sample is added to the bucket of *both*
resolutions as it arrives (a 5-minute bucket is the sum of its thirty 10-second ones), and
:func:`prune` drops buckets older than their retention, so downsampling needs no
separate pass over old data.

- ``deployment`` series: per bucket, requests, 5xx errors, prompt and completion tokens,
  summed latency and a latency histogram over ``gateway.stats.LATENCY_BUCKETS`` (from
  the gateway's request records); p50/p99 are estimated by linear interpolation inside
  the histogram bucket that holds the quantile (as Prometheus' ``histogram_quantile``).
- ``node`` series: per bucket, the sum of ``samples`` allocation samples (GPUs and GPUs
  allocated, CPU millicores and allocated millicores), one per 10 seconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Float, case, cast, delete, exists, func, literal, null, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neocloud.gateway.stats import LATENCY_BUCKETS
from neocloud.gateway.types import RequestRecord
from neocloud.models.metrics import DeploymentPoint, NodePoint
from neocloud.server.db.batches import id_batches
from neocloud.server.db.tables import Allocation, MetricPoint, Node

#: resolution (seconds) -> retention (seconds).
RESOLUTIONS: dict[int, int] = {10: 86_400, 300: 31 * 86_400}
FINE, COARSE = 10, 300


def resolution_for(window_s: float) -> int:
    """The finest resolution whose retention covers a window of ``window_s`` seconds."""
    return FINE if window_s <= RESOLUTIONS[FINE] else COARSE


@dataclass
class _Acc:
    workspace_id: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_sum_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))


def _add_hist(a: list[int], b: Iterable[int]) -> list[int]:
    b = list(b)
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def _upsert(s: Session, *, series: str, object_id: str, resolution_s: int, t: int,
            workspace_id: str | None) -> MetricPoint:
    """The bucket row, created if missing (another control-plane copy may race: the
    unique constraint decides, and the loser re-reads the winner's row)."""
    q = select(MetricPoint).where(MetricPoint.series == series,
                                  MetricPoint.object_id == object_id,
                                  MetricPoint.resolution_s == resolution_s, MetricPoint.t == t)
    row = s.scalars(q.with_for_update()).first()
    if row is not None:
        return row
    try:
        with s.begin_nested():
            row = MetricPoint(series=series, object_id=object_id, resolution_s=resolution_s,
                              t=t, workspace_id=workspace_id, requests=0, errors=0,
                              prompt_tokens=0, completion_tokens=0, latency_sum_s=0.0,
                              latency_buckets=[], samples=0, gpus=0.0, gpus_allocated=0.0,
                              cpu_milli=0.0, cpu_allocated_milli=0.0)
            s.add(row)
            s.flush()
        return row
    except IntegrityError:
        row = s.scalars(q.with_for_update()).first()
        assert row is not None
        return row



def _bucket_rows(s: Session, accs: Mapping[tuple[str, int, int], str | None],
                 series: str = "deployment") -> dict[tuple[str, int, int], MetricPoint]:
    """The rows of every bucket in ``accs`` (key -> the workspace of a new row) of
    ``series``, read in one query per resolution (and per ``db.batches.IDS_PER_QUERY`` objects)
    and the missing ones inserted together (a batch spanning a day, or a sample of every
    node, costs a few statements, not one per bucket). If another copy inserted one of
    them first, the batch insert is undone and the caller falls back to :func:`_upsert`
    for each bucket."""
    out: dict[tuple[str, int, int], MetricPoint] = {}
    for res in RESOLUTIONS:
        keys = [k for k in accs if k[1] == res]
        if not keys:
            continue
        ids = sorted({k[0] for k in keys})
        lo, hi = min(k[2] for k in keys), max(k[2] for k in keys)
        for batch in id_batches(ids):
            for row in s.scalars(select(MetricPoint).where(
                    MetricPoint.series == series,
                    MetricPoint.object_id.in_(batch),
                    MetricPoint.resolution_s == res, MetricPoint.t >= lo, MetricPoint.t <= hi)
                    .with_for_update()):
                out[(row.object_id, res, row.t)] = row
    new = [MetricPoint(series=series, object_id=k[0], resolution_s=k[1], t=k[2],
                       workspace_id=accs[k], requests=0, errors=0,
                       prompt_tokens=0, completion_tokens=0, latency_sum_s=0.0,
                       latency_buckets=[], samples=0, gpus=0.0, gpus_allocated=0.0,
                       cpu_milli=0.0, cpu_allocated_milli=0.0)
           for k in accs if k not in out]
    if new:
        try:
            with s.begin_nested():
                s.add_all(new)
                s.flush()
        except IntegrityError:
            return {k: v for k, v in out.items()}
        out.update({(r.object_id, r.resolution_s, r.t): r for r in new})
    return out


def record_requests(s: Session, batch: Iterable[RequestRecord]) -> None:
    """Add gateway request records to their deployments' buckets (by completion time)."""
    accs: dict[tuple[str, int, int], _Acc] = {}
    for r in batch:
        end = r.started_at + r.latency_s
        for res in RESOLUTIONS:
            key = (r.deployment_id, res, int(end // res * res))
            a = accs.get(key)
            if a is None:
                a = accs[key] = _Acc(workspace_id=r.workspace_id)
            a.requests += 1
            a.errors += 1 if r.status >= 500 else 0
            a.prompt_tokens += r.prompt_tokens
            a.completion_tokens += r.completion_tokens
            a.latency_sum_s += r.latency_s
            a.buckets[bisect.bisect_left(LATENCY_BUCKETS, r.latency_s)] += 1
    rows = _bucket_rows(s, {k: a.workspace_id for k, a in accs.items()})
    for (dep_id, res, t), a in sorted(accs.items()):
        row = rows.get((dep_id, res, t)) or _upsert(
            s, series="deployment", object_id=dep_id, resolution_s=res, t=t,
            workspace_id=a.workspace_id)
        row.requests += a.requests
        row.errors += a.errors
        row.prompt_tokens += a.prompt_tokens
        row.completion_tokens += a.completion_tokens
        row.latency_sum_s += a.latency_sum_s
        row.latency_buckets = _add_hist(list(row.latency_buckets or []), a.buckets)


#: The unique key of a bucket row (``metric_points``' unique constraint).
BUCKET_KEY = ("series", "object_id", "resolution_s", "t")

#: The columns of a node sample added to a bucket row that already holds samples.
SAMPLE_SUMS = ("samples", "gpus", "gpus_allocated", "cpu_milli", "cpu_allocated_milli")


def _dialect_insert(s: Session) -> Any:
    """The ``INSERT`` into ``metric_points`` of the session's database, with ``ON
    CONFLICT`` (both PostgreSQL and SQLite have it): of the table, not the ORM class, so
    that thousands of rows are sent as they are (the ORM's bulk insert handles each row in
    Python first)."""
    table: Any = MetricPoint.__table__
    if s.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


def _held_per_node() -> Any:
    """A subquery: per node with allocations, ``node_id``, ``gpu_milli`` (the GPU shares
    held, milli-GPU: a GPU allocation holds ``gpu_milli`` of each GPU in
    ``gpu_indices``) and ``cpu_milli`` (the millicores held), summed by the database."""
    gpu_milli = case((Allocation.gpu_milli > 0,
                      func.json_array_length(Allocation.gpu_indices) * Allocation.gpu_milli),
                     else_=0)
    return (select(Allocation.node_id.label("node_id"),
                   func.sum(gpu_milli).label("gpu_milli"),
                   func.sum(Allocation.cpu_milli).label("cpu_milli"))
            .group_by(Allocation.node_id).subquery())


def held_per_node(s: Session) -> dict[str, tuple[float, float]]:
    """Node id -> (GPUs allocated, CPU millicores allocated), summed by the database in
    one statement; nodes without allocations are left out."""
    held = _held_per_node()
    return {node_id: (float(g or 0) / 1000.0, float(c or 0)) for node_id, g, c in s.execute(
        select(held.c.node_id, held.c.gpu_milli, held.c.cpu_milli))}


#: The columns of a node sample's bucket row, in the order :func:`_node_rows` gives them.
SAMPLE_COLUMNS = ("series", "object_id", "resolution_s", "t", "workspace_id", "requests",
                  "errors", "prompt_tokens", "completion_tokens", "latency_sum_s",
                  "latency_buckets", *SAMPLE_SUMS)


def _node_rows(res: int, t: int, ids: Sequence[str] | None = None) -> Any:
    """A ``SELECT`` of the bucket rows (:data:`SAMPLE_COLUMNS`) of resolution ``res`` and
    start ``t`` (unix seconds) holding one sample of every node (of ``ids`` only, when
    given) whose 10-second row for ``t`` is not taken yet (``ids``: the nodes this
    sample won, so none is left out), in node id order: the allocations summed by the
    database, nothing read into Python."""
    held = _held_per_node()
    table: Any = MetricPoint.__table__
    fine_t = t // FINE * FINE
    query = select(
        literal("node"), Node.id, literal(res), literal(t), null(), literal(0), literal(0),
        literal(0), literal(0), literal(0.0),
        literal([], type_=table.c.latency_buckets.type), literal(1),
        cast(func.coalesce(func.json_array_length(Node.gpus), 0), Float),
        cast(func.coalesce(held.c.gpu_milli, 0), Float) / 1000.0,
        cast(Node.cpu_milli, Float),
        cast(func.coalesce(held.c.cpu_milli, 0), Float),
    ).select_from(Node).outerjoin(held, held.c.node_id == Node.id)
    if ids is not None:
        query = query.where(Node.id.in_(list(ids)))
    else:
        query = query.where(~exists().where(  # not sampled in this bucket yet
            table.c.series == "node", table.c.resolution_s == FINE, table.c.t == fine_t,
            table.c.object_id == Node.id))
    return query.order_by(Node.id)


def sample_nodes(s: Session, now: datetime) -> int:
    """Take one allocation sample of every node for the current 10-second bucket (once
    per bucket, whichever copy comes first); returns the samples written.

    A few statements whatever the fleet's size (it runs every 10 s over every node),
    each ``INSERT ... SELECT`` from the nodes and their allocations summed by the
    database, no row read into Python but the node ids this call sampled: the
    10-second rows first (``ON CONFLICT DO NOTHING ... RETURNING``: a node another copy
    sampled first in this bucket is left out, and only the rows this call inserted are
    counted), then for those nodes each coarser bucket's rows inserted or added to
    (``ON CONFLICT DO UPDATE`` adding the sample's sums). Rows are written in node id
    order, so copies sampling at once never deadlock."""
    t_now = int(now.timestamp())
    conn = s.connection()
    ins = _dialect_insert(s)
    won = sorted(conn.execute(
        ins.from_select(list(SAMPLE_COLUMNS), _node_rows(FINE, t_now // FINE * FINE))
        .on_conflict_do_nothing(index_elements=list(BUCKET_KEY))
        .returning(ins.table.c.object_id)).scalars().all())
    for res in (r for r in RESOLUTIONS if r != FINE):
        for batch in id_batches(won):
            ins = _dialect_insert(s)
            conn.execute(ins.from_select(
                list(SAMPLE_COLUMNS), _node_rows(res, t_now // res * res, batch))
                .on_conflict_do_update(
                    index_elements=list(BUCKET_KEY),
                    set_={c: ins.table.c[c] + getattr(ins.excluded, c) for c in SAMPLE_SUMS}))
    return len(won)


def prune(s: Session, now: datetime) -> int:
    """Delete buckets older than their resolution's retention; returns rows deleted."""
    n = 0
    for res, keep in RESOLUTIONS.items():
        cutoff = int(now.timestamp()) - keep
        result = s.execute(delete(MetricPoint).where(MetricPoint.resolution_s == res,
                                                     MetricPoint.t < cutoff))
        n += int(getattr(result, "rowcount", 0) or 0)
    return n


def quantile_ms(buckets: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, in milliseconds; ``None`` if empty.

    Linear interpolation inside the bucket holding the quantile; the open last bucket is
    taken to end at twice the last finite bound."""
    n = sum(buckets)
    if n == 0:
        return None
    rank = q * n
    seen = 0
    for i, c in enumerate(buckets):
        if c and seen + c >= rank:
            lo = LATENCY_BUCKETS[i - 1] if i > 0 else 0.0
            hi = LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else LATENCY_BUCKETS[-1] * 2
            return (lo + (hi - lo) * (rank - seen) / c) * 1000.0
        seen += c
    return LATENCY_BUCKETS[-1] * 2000.0


def _rows(s: Session, series: str, object_id: str, res: int, start: int,
          end: int) -> list[MetricPoint]:
    return list(s.scalars(select(MetricPoint).where(
        MetricPoint.series == series, MetricPoint.object_id == object_id,
        MetricPoint.resolution_s == res, MetricPoint.t >= start // res * res,
        MetricPoint.t < end).order_by(MetricPoint.t)))


def window(now: float, window_s: int, resolution_s: int) -> tuple[int, int]:
    """The buckets a chart of the last ``window_s`` seconds shows: ``(start, end)`` in unix
    seconds, both multiples of ``resolution_s``, ``end`` the start of the bucket still open
    at ``now`` (left out: see :func:`deployment_points`), and ``ceil(window_s /
    resolution_s)`` buckets between them."""
    end = int(now) // resolution_s * resolution_s
    return end - -(-window_s // resolution_s) * resolution_s, end


def deployment_points(s: Session, *, deployment_id: str, start: int, end: int,
                      resolution_s: int) -> list[DeploymentPoint]:
    """Every bucket of a deployment in ``[start, end)`` (unix seconds; ``start`` is rounded
    down to a bucket), one point per ``resolution_s`` seconds whether or not it saw
    requests: a bucket without requests reads as zero requests, errors and tokens (so a
    chart drops to zero when load stops instead of joining across idle time) and as
    ``None`` latencies (a gap: there is no latency to show).

    Rates are the bucket's counts over its full ``resolution_s``, which is right only for
    a bucket that has closed. Callers pass an ``end`` no later than the start of the
    bucket still open (:func:`window` does): the open bucket is *left out* rather than
    divided by its elapsed time, because request records reach the history in batches
    (one per reconciler pass), so its count lags its elapsed time and its rate would read
    low, then jump. A series is therefore up to one bucket behind, and exact.
    """
    by_t = {r.t: r for r in _rows(s, "deployment", deployment_id, resolution_s, start, end)}
    out = []
    for t in range(start // resolution_s * resolution_s, end, resolution_s):
        r = by_t.get(t)
        if r is None:
            out.append(DeploymentPoint(t=t, requests=0, errors=0, prompt_tokens=0,
                                       completion_tokens=0, request_rate_per_s=0.0,
                                       tokens_per_s=0.0, latency_p50_ms=None,
                                       latency_p99_ms=None))
            continue
        hist = list(r.latency_buckets or [])
        out.append(DeploymentPoint(
            t=r.t, requests=r.requests, errors=r.errors, prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            request_rate_per_s=r.requests / resolution_s,
            tokens_per_s=(r.prompt_tokens + r.completion_tokens) / resolution_s,
            latency_p50_ms=quantile_ms(hist, 0.5), latency_p99_ms=quantile_ms(hist, 0.99)))
    return out


def node_points(s: Session, *, node_id: str, start: int, end: int,
                resolution_s: int) -> list[NodePoint]:
    """The buckets of a node in ``[start, end)`` that hold samples (a bucket without one is
    left out: allocation is a level, unknown there, not zero), each the samples' mean."""
    out = []
    for r in _rows(s, "node", node_id, resolution_s, start, end):
        k = max(1, r.samples)
        out.append(NodePoint(t=r.t, gpus=r.gpus / k, gpus_allocated=r.gpus_allocated / k,
                             cpu_milli=r.cpu_milli / k,
                             cpu_allocated_milli=r.cpu_allocated_milli / k))
    return out


def size(s: Session) -> dict[str, int]:
    """Rows per ``series/resolution`` (e.g. ``deployment/10s``)."""
    rows = s.execute(select(MetricPoint.series, MetricPoint.resolution_s, func.count())
                     .group_by(MetricPoint.series, MetricPoint.resolution_s)).all()
    return {f"{series}/{res}s": int(n) for series, res, n in rows}
