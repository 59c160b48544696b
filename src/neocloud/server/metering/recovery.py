"""Recovery of the ledger rows a dead gateway left unfinished, from the replicas' counts.

A ``request_usage`` row still ``open`` (the gateway died mid-request: a stream cut by a
``kill -9``) or ``counting`` (it died before the replica's count came back) whose owner
has not touched it for ``stale_s`` seconds is an orphan. Each flush asks the replica for
its count, ``GET /usage?id=<meter id>&wait_s=0`` (the serving runtime keeps one per
request): a ``counting`` row asks the replica that answered it, an ``open`` row every
ready replica of its deployment (the meter id is unique: only the replica that served
it knows it). Then the row is closed, in one guarded update (so two copies recovering
at once close it once):

- with the replica's count, once the replica says the request ``finished``; an ``open``
  row gets status :data:`CUT_STATUS` (the client's response was cut), a ``counting`` row
  keeps the status it was answered with;
- with what the row holds (the tokens the gateway read; none for an ``open`` row) when
  every replica asked answered 404 (it does not meter, or forgot the id), or when none
  could be asked for ``give_up_s`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Replica, RequestUsage
from neocloud.server.metering.ledger import UNFINISHED, LedgerState, stored_tokens
from neocloud.server.services.deployments import serving_upstreams

log = logging.getLogger(__name__)

#: Status recorded for a request whose gateway died before its response ended.
CUT_STATUS = 502
#: Seconds after its owner's last touch before an unfinished row is an orphan (several
#: touches: ``ledger.TOUCH_S`` is 5 s).
STALE_S = 30.0
#: Seconds an orphan waits for a replica that can be asked before it is closed as is.
GIVE_UP_S = 300.0
#: Orphans recovered per flush.
MAX_PER_FLUSH = 200
#: Seconds one replica may take to answer a count.
ASK_TIMEOUT_S = 2.0
#: Seconds of asking per flush; the orphans left are asked at the next flush (the
#: metering thread never stalls long on replicas that do not answer).
BUDGET_S = 5.0


class Unknown(Enum):
    """The replica answered but has no count for the id (404: it does not meter)."""

    unknown = "unknown"


UNKNOWN = Unknown.unknown


@dataclass(frozen=True, slots=True)
class Count:
    """A replica's count of one finished request."""

    prompt_tokens: int
    completion_tokens: int


#: Asks the replica at a base URL for a meter id's count: a :class:`Count`,
#: :data:`UNKNOWN`, or ``None`` (no answer, or the request has not finished there).
Ask = Callable[[str, str], "Count | Unknown | None"]


def ask_replica(url: str, meter_id: str) -> Count | Unknown | None:
    """:data:`Ask` over HTTP (``GET {url}/usage?id=...&wait_s=0``)."""
    try:
        r = httpx.get(f"{url}/usage", params={"id": meter_id, "wait_s": "0"},
                      timeout=ASK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        log.debug("usage recovery: cannot ask %s: %s", url, exc)
        return None
    if r.status_code == 404:
        return UNKNOWN
    if r.status_code != 200:
        return None
    try:
        body = r.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    p, c = body.get("prompt_tokens"), body.get("completion_tokens")
    if (not body.get("finished") or not isinstance(p, int) or not isinstance(c, int)
            or isinstance(p, bool) or isinstance(c, bool)):
        return None
    return Count(stored_tokens(p), stored_tokens(c))


def replica_urls(s: Session, deployment_ids: set[str]) -> dict[str, dict[str, str]]:
    """Deployment id -> replica id -> base URL of its replicas that serve requests (as
    the route table reaches them: ``services.deployments.serving_upstreams``)."""
    rows = s.execute(serving_upstreams()
                     .where(Replica.deployment_id.in_(deployment_ids))).all()
    out: dict[str, dict[str, str]] = {}
    for dep_id, rep_id, u in rows:
        out.setdefault(dep_id, {})[rep_id] = u
    return out


def recover_orphans(db: Database, *, owner: str, stale_s: float = STALE_S,
                    give_up_s: float = GIVE_UP_S, ask: Ask = ask_replica,
                    now: float | None = None) -> int:
    """Close the orphaned rows that can be closed now (see the module docstring);
    returns how many. Rows of ``owner`` (this process) are never orphans."""
    now = time.time() if now is None else now
    with db.session() as s:
        rows = s.scalars(
            select(RequestUsage)
            .where(RequestUsage.state.in_(UNFINISHED), RequestUsage.owner != owner,
                   RequestUsage.seen_at <= now - stale_s)
            .order_by(RequestUsage.seen_at).limit(MAX_PER_FLUSH)).all()
        if not rows:
            return 0
        urls = replica_urls(s, {r.deployment_id for r in rows})
        s.expunge_all()
    closed = 0
    deadline = time.monotonic() + BUDGET_S
    for row in rows:
        if time.monotonic() > deadline:
            break
        mine = urls.get(row.deployment_id, {})
        if row.state == LedgerState.counting.value:
            asked = [mine[row.replica_id]] if row.replica_id in mine else []
        else:
            asked = list(mine.values())
        answers = [ask(u, row.id) for u in asked]
        count = next((a for a in answers if isinstance(a, Count)), None)
        values: dict[str, object] = {"state": LedgerState.closed.value}
        if count is not None:
            values.update(prompt_tokens=count.prompt_tokens,
                          completion_tokens=count.completion_tokens)
        elif not ((asked and all(a is UNKNOWN for a in answers))
                  or now - row.seen_at >= give_up_s):
            continue  # ask again at the next flush
        if row.state == LedgerState.open.value:
            values["status"] = CUT_STATUS
            values["latency_s"] = max(0.0, row.seen_at - row.started_at)
        with db.session() as s:
            done = s.execute(update(RequestUsage).where(
                RequestUsage.id == row.id, RequestUsage.state == row.state,
                RequestUsage.seen_at == row.seen_at).values(**values))
        closed += done.rowcount  # type: ignore[attr-defined]
    return closed


__all__ = ["ASK_TIMEOUT_S", "BUDGET_S", "CUT_STATUS", "GIVE_UP_S", "STALE_S", "UNKNOWN",
           "Ask", "Count", "Unknown", "ask_replica", "recover_orphans", "replica_urls"]
