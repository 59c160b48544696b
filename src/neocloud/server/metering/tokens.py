"""Token usage from the gateway: request records in, priced ``tokens`` usage records out.

:class:`UsageBuffer` is the gateway's usage sink on the control plane. ``record`` only
appends (the gateway's hot path never waits); :meth:`UsageBuffer.flush` (run by the
reconciler thread after every pass) writes, per workspace, deployment, UTC day and token
price in force at the requests' arrival, two records: ``input_tokens`` (with the request
count and summed latency) and ``output_tokens``, each priced per million tokens (see
``services.prices.token_price``). The same batch feeds the metrics history
(``services.metrics_history.record_requests``).
"""

from __future__ import annotations

import bisect
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.gateway.types import RequestRecord
from neocloud.models.billing import Meter, PriceKind
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Deployment, UsageRecord
from neocloud.server.metering.money import tokens_micros
from neocloud.server.metering.periods import billed_periods, day_of
from neocloud.server.services import metrics_history, prices


class UsageBuffer:
    """Collects gateway request records; :meth:`flush` writes the ``tokens`` usage records
    (two per deployment, day and price) and the metrics-history buckets since the last
    flush."""

    def __init__(self, db: Database):
        self.db = db
        self._lock = threading.Lock()
        self._pending: list[RequestRecord] = []

    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._pending.append(rec)

    def flush(self) -> int:
        """Write what was collected; returns the number of request records written. On a
        database error the batch is put back, to be written by the next flush."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            with self.db.session() as s:
                write_tokens(s, batch, datetime.now(UTC))
                metrics_history.record_requests(s, batch)
        except Exception:
            with self._lock:
                self._pending[:0] = batch
            raise
        return len(batch)


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
                prompt_tokens=p_tok, requests=len(part),
                seconds=sum(r.latency_s for r in part),
                unit_price_micros=price.input_per_m_micros, amount_micros=a_in,
                cost_usd=a_in / 1e6))
            out.append(UsageRecord(
                **common, meter=Meter.output_tokens.value, quantity=float(c_tok),
                completion_tokens=c_tok, unit_price_micros=price.output_per_m_micros,
                amount_micros=a_out, cost_usd=a_out / 1e6))
    s.add_all(out)
    return out
