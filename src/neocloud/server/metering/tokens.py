"""Token usage from the gateway: request records in, priced ``tokens`` usage records out.

:class:`UsageBuffer` is the gateway's usage sink on the control plane, durable against a
``kill -9`` at any instant: each request is a row of the request ledger
(:mod:`neocloud.server.metering.ledger`, whose docstring states the invariant) committed
before it is forwarded and again before its response ends. :meth:`UsageBuffer.flush`
(run by the metering thread every reconcile interval, and at shutdown) bills the closed
rows and deletes them in one transaction, then recovers the rows a dead gateway left
unfinished from the replicas' own counts (:mod:`neocloud.server.metering.recovery`).

Billing writes, per workspace, deployment, UTC day and token price in force at the
requests' arrival, two records: ``input_tokens`` (with the count of requests served,
status below 400, the failed ones counted apart in ``failed_requests``, and the summed
latency) and ``output_tokens``, each priced per million tokens (see
``services.prices.token_price``). Failed requests' tokens are billed: the engine did that
work (a client that left mid-stream). The same batch feeds the metrics history
(``services.metrics_history.record_requests``).
"""

from __future__ import annotations

import bisect
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from neocloud.gateway.types import RequestRecord
from neocloud.models.billing import Meter, PriceKind
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, RequestUsage, UsageRecord
from neocloud.server.metering import recovery
from neocloud.server.metering.ledger import LedgerState, RequestLedger, record_of
from neocloud.server.metering.money import tokens_micros
from neocloud.server.metering.periods import billed_periods, day_of
from neocloud.server.services import metrics_history, prices

#: Closed ledger rows billed per transaction.
BILL_BATCH = 1000
#: Seconds a request waits at most for its ledger write (its open row, or its end) before
#: the gateway goes on without it: an open row not stored by then refuses the request
#: (503), an end not stored by then stays queued (and the row, if this process dies
#: first, is recovered from the replica).
WAIT_S = 10.0


class BilledTwice(RuntimeError):
    """Another flush billed some of the rows this one read: its transaction is undone."""


class UsageBuffer:
    """The control plane's usage sink: the gateway's durable sink
    (:class:`~neocloud.gateway.types.DurableUsageSink`) over the request ledger.

    Args:
        db: the database.
        stale_s: seconds after its owner's last touch before an unfinished row of another
            process is recovered (default: :data:`recovery.STALE_S` on PostgreSQL, where
            several control planes may share the database; 0 on SQLite, where one control
            plane uses it, so a restart recovers at once what its predecessor left).
        give_up_s: see :func:`recovery.recover_orphans`.
        ask: asks a replica for a request's count (tests pass their own).
        wait_s: see :data:`WAIT_S`.
    """

    def __init__(self, db: Database, *, stale_s: float | None = None,
                 give_up_s: float = recovery.GIVE_UP_S,
                 ask: recovery.Ask = recovery.ask_replica,
                 wait_s: float = WAIT_S) -> None:
        self.db = db
        self.wait_s = wait_s
        self.ledger = RequestLedger(db)
        self.stale_s = (stale_s if stale_s is not None
                        else recovery.STALE_S if db.is_postgres else 0.0)
        self.give_up_s = give_up_s
        self.ask = ask

    # ------------------------------------------------------------------ the gateway's side
    def record(self, rec: RequestRecord) -> None:
        """Take a finished request (the plain sink's way, for callers that do not wait):
        queued as a closed ledger row, committed by the writer soon after."""
        if rec.request_id is None:
            rec = replace(rec, request_id="r-" + uuid.uuid4().hex)
        self.ledger.submit(rec, LedgerState.closed, insert_row=True)

    async def opened(self, rec: RequestRecord) -> None:
        """The request is about to be forwarded: its ``open`` row is committed on return.

        Raises:
            TimeoutError: not stored within :attr:`wait_s` (the gateway refuses the
                request; the row, if it is stored later, is deleted).
            Exception: the database did not take it (the gateway refuses the request).
        """
        await self.ledger.write(rec, LedgerState.open, insert_row=True,
                                timeout_s=self.wait_s)

    async def ended(self, rec: RequestRecord, *, final: bool) -> None:
        """The request ended (``final``: with its final count, else the replica's count
        follows): its row is updated and committed on return.

        Raises:
            TimeoutError: not stored within :attr:`wait_s` (it stays queued).
            Exception: the database did not take it; the ledger tries the write again at
                its next touches (``ledger.RETRIES``), and a row still unfinished when
                this process is gone is recovered from the replica.
        """
        await self.ledger.write(rec, LedgerState.closed if final else LedgerState.counting,
                                insert_row=False, retry=True, timeout_s=self.wait_s)

    # ------------------------------------------------------------------ the metering side
    def flush(self) -> int:
        """Commit what is queued, bill every closed row (deleting it in the same
        transaction), then recover the orphans that can be; returns the number of
        request records billed.

        Raises:
            Exception: a database error (rows not billed stay, for the next flush).
        """
        self.ledger.drain()
        n = 0
        while True:
            got = bill_closed(self.db, datetime.now(UTC))
            n += got
            if got < BILL_BATCH:
                break
        if recovery.recover_orphans(self.db, owner=self.ledger.owner, stale_s=self.stale_s,
                                    give_up_s=self.give_up_s, ask=self.ask):
            n += bill_closed(self.db, datetime.now(UTC))
        return n

    def close(self) -> None:
        """Commit what is queued and stop the ledger's writer."""
        self.ledger.close()


def bill_closed(db: Database, now: datetime, limit: int = BILL_BATCH) -> int:
    """Bill up to ``limit`` closed ledger rows and delete them, in one transaction;
    returns how many.

    Raises:
        BilledTwice: another flush deleted some of them first (nothing is written).
    """
    with db.session() as s:
        rows = s.scalars(select(RequestUsage)
                         .where(RequestUsage.state == LedgerState.closed.value)
                         .order_by(RequestUsage.started_at).limit(limit)).all()
        if not rows:
            return 0
        batch = [record_of(r) for r in rows]
        write_tokens(s, batch, now)
        metrics_history.record_requests(s, batch)
        done = s.execute(delete(RequestUsage).where(
            RequestUsage.id.in_([r.id for r in rows]),
            RequestUsage.state == LedgerState.closed.value))
        gone = done.rowcount  # type: ignore[attr-defined]
        if gone != len(rows):
            raise BilledTwice(f"{len(rows) - gone} of {len(rows)} ledger rows were billed"
                              " by another flush")
    return len(batch)


def served(rec: RequestRecord) -> bool:
    """Whether a request counts as served (status below 400); the others are failed."""
    return 0 < rec.status < 400


def write_tokens(s: Session, batch: list[RequestRecord], now: datetime) -> list[UsageRecord]:
    """Add the priced ``input_tokens`` / ``output_tokens`` records of ``batch`` to session
    ``s`` (see the module docstring); returns them."""
    groups: dict[tuple[str, str, str], list[RequestRecord]] = {}
    for rec in batch:
        when = datetime.fromtimestamp(rec.started_at, UTC)
        groups.setdefault((rec.workspace_id, rec.deployment_id, day_of(when)), []).append(rec)
    deps = {d.id: d for d in s.scalars(
        select(Deployment).where(Deployment.id.in_({k[1] for k in groups})))}
    out: list[UsageRecord] = []
    for (ws, dep_id, _day), recs in groups.items():
        recs.sort(key=lambda r: r.started_at)
        dep = deps.get(dep_id)
        name = dep.name if dep else dep_id[:8]
        targets = [dep.name, dep.model, dep.service] if dep else []
        t0 = datetime.fromtimestamp(recs[0].started_at, UTC)
        t1 = datetime.fromtimestamp(recs[-1].started_at, UTC) + timedelta(microseconds=1)
        cuts = [c.timestamp() for c in
                prices.changes_between(s, PriceKind.model, targets, t0, t1)]
        pieces: dict[int, list[RequestRecord]] = {}
        for r in recs:
            pieces.setdefault(bisect.bisect_right(cuts, r.started_at), []).append(r)
        for part in pieces.values():
            start = datetime.fromtimestamp(part[0].started_at, UTC)
            price = prices.token_price(s, targets, start)
            day, month = billed_periods(start, now)
            p_tok = sum(r.prompt_tokens for r in part)
            c_tok = sum(r.completion_tokens for r in part)
            common = dict(workspace_id=ws, kind="tokens", object_id=dep_id, name=name,
                          period_start=start, period_end=now, bill_day=day, bill_month=month)
            a_in = tokens_micros(price.input_per_m_micros, p_tok)
            a_out = tokens_micros(price.output_per_m_micros, c_tok)
            out.append(UsageRecord(
                **common, meter=Meter.input_tokens.value, quantity=float(p_tok),
                prompt_tokens=p_tok, requests=sum(1 for r in part if served(r)),
                failed_requests=sum(1 for r in part if not served(r)),
                seconds=sum(r.latency_s for r in part),
                unit_price_micros=price.input_per_m_micros, amount_micros=a_in,
                cost_usd=a_in / 1e6))
            out.append(UsageRecord(
                **common, meter=Meter.output_tokens.value, quantity=float(c_tok),
                completion_tokens=c_tok, unit_price_micros=price.output_per_m_micros,
                amount_micros=a_out, cost_usd=a_out / 1e6))
    s.add_all(out)
    return out
