"""The request ledger: every gateway request in the database from before it is forwarded
until its tokens are billed, written by group commit.

**Invariant: no gateway request is lost or billed twice, whenever a control plane is
killed.** Each request has one ``request_usage`` row, keyed by its meter id (unique per
request: a random prefix of the gateway process and a counter), which is:

1. inserted ``open`` and committed *before* the request is forwarded to a replica (a
   request the ledger cannot take is refused with 503, never served unrecorded);
2. updated with its status and the tokens the gateway read, and committed *before the
   last bytes of the response are sent* (``closed``; or ``counting`` when the replica's
   own count is still to be asked for, then ``closed`` with it);
3. billed and deleted in one transaction by the metering flush
   (:meth:`~neocloud.server.metering.tokens.UsageBuffer.flush`), which deletes exactly
   the rows it billed or rolls back (so two flushes never bill a row twice).

A row still ``open`` or ``counting`` whose gateway died (its owner stopped touching it)
is recovered by the flush from the replica's count (``GET /usage?id=<meter id>``): see
:mod:`neocloud.server.metering.tokens`.

Group commit: writes from the request path queue here; one writer thread commits all
that queued in one transaction and then wakes every waiter, so a request waits for about
one commit however many run at once. A batch that fails on one write's data (an
integrity or data error) is committed again one write per transaction, so one bad row
fails only its own request. The writer also touches its own ``open`` and ``counting``
rows every :data:`TOUCH_S` (``seen_at``), which is how other processes tell a live
request from an orphan; that touch also retries the end of a request whose first write
failed (``retry=True``), for :data:`RETRIES` touches: its row is this process's, so no
recovery would ever close it while the process lives.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, delete, update
from sqlalchemy.exc import DataError, IntegrityError

from neocloud.gateway.types import RequestRecord
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import REQUEST_PATH_CHARS, RequestUsage

log = logging.getLogger(__name__)

#: Seconds between the writer's touches of its own unfinished rows.
TOUCH_S = 5.0
#: Most writes committed in one transaction.
MAX_BATCH = 1000
#: Touches at which a failed ``retry=True`` write is tried again before it is dropped
#: (its row then stays unfinished, recovered from the replica once this process is gone).
RETRIES = 60
#: Most writes queued before a new request is refused at once (a database that hangs:
#: the queue would otherwise grow with every request while the writer waits).
MAX_QUEUE = 50_000
#: Longest path stored (characters: the column's length); a longer one is cut.
PATH_CHARS = REQUEST_PATH_CHARS
#: Most tokens stored for one count of one request: the largest value of the token
#: columns on PostgreSQL (``integer``); a larger count, which only a replica's own
#: answer can carry, is cut to it.
MAX_TOKENS = 2**31 - 1


class LedgerState(StrEnum):
    """The state of a ``request_usage`` row."""

    open = "open"
    """Forwarded (or about to be), not ended."""
    counting = "counting"
    """Ended; the replica's own count is awaited."""
    closed = "closed"
    """Final: billed (and deleted) by the next flush."""


UNFINISHED = (LedgerState.open.value, LedgerState.counting.value)


def stored_path(path: str) -> str:
    """``path`` as a text column takes it: at most :data:`PATH_CHARS` characters, a NUL
    (``%00`` in the URL; PostgreSQL refuses it in text) replaced by U+FFFD."""
    return path.replace("\x00", "\ufffd")[:PATH_CHARS]


def stored_tokens(n: int) -> int:
    """A token count as the ledger stores it: within ``0`` .. :data:`MAX_TOKENS`.

    The counts come from the bytes of a replica's answer (or its ``/usage``), which a
    deployment's own image writes: a negative one would be billed as a credit, and one
    past the column's range failed the ledger's whole batch (SQLite: ``OverflowError``
    from 2**63, not a data error, so every other request of the batch was refused with
    503; PostgreSQL: its end write was tried again at each touch and never stored)."""
    return min(max(int(n), 0), MAX_TOKENS)


def row_values(rec: RequestRecord, state: LedgerState, owner: str,
               now: float) -> dict[str, Any]:
    """The columns of ``rec``'s row (``rec.request_id`` must be set); times in unix
    seconds (``now``: ``seen_at``)."""
    assert rec.request_id is not None
    return {"id": rec.request_id, "owner": owner, "state": state.value,
            "workspace_id": rec.workspace_id, "token_id": rec.token_id,
            "deployment_id": rec.deployment_id, "replica_id": rec.replica_id,
            "path": stored_path(rec.path), "status": rec.status, "latency_s": rec.latency_s,
            "prompt_tokens": stored_tokens(rec.prompt_tokens),
            "completion_tokens": stored_tokens(rec.completion_tokens),
            "started_at": rec.started_at,
            "seen_at": now}


def record_of(row: RequestUsage) -> RequestRecord:
    """The request record of a ledger row."""
    return RequestRecord(
        workspace_id=row.workspace_id, token_id=row.token_id,
        deployment_id=row.deployment_id, replica_id=row.replica_id, path=row.path,
        status=row.status, latency_s=row.latency_s, prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens, started_at=row.started_at,
        request_id=row.id)


@dataclass(slots=True)
class _Write:
    """One queued write: an insert (``values`` of a new row) or an update of the row
    ``values["id"]`` unless it is ``closed`` already; settled through ``done`` (a
    thread's caller) or ``waiter`` on ``loop`` (a coroutine). ``retry``: kept to be tried
    again at the next touches when it fails; ``tries``: the touches it was tried at
    (a retried copy has no caller and is not counted by :meth:`RequestLedger.drain`)."""

    insert: bool
    values: dict[str, Any]
    done: Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[None] | None = None
    retry: bool = False
    tries: int = 0
    drop: bool = False
    """Delete the row ``values["id"]`` if it is still ``open`` (a request refused after
    its insert was queued: it was never forwarded)."""


def _settle(waiters: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    """Wake the coroutines of one committed (or failed) batch, on their loop."""
    for f in waiters:
        if f.done():
            continue
        if exc is None:
            f.set_result(None)
        else:
            f.set_exception(exc)


class RequestLedger:
    """Writes ``request_usage`` rows by group commit (see the module docstring).

    Args:
        db: the database.
        touch_s: seconds between touches of this ledger's unfinished rows.
        owner: this process's id on its rows (default: a fresh random one).
    """

    def __init__(self, db: Database, *, touch_s: float = TOUCH_S,
                 owner: str | None = None) -> None:
        self.db = db
        self.touch_s = touch_s
        self.owner = owner or secrets.token_hex(8)
        self._cv = threading.Condition()
        self._queue: list[_Write] = []
        self._queued = 0
        """Writes queued since the start (the writer takes them in order)."""
        self._settled = 0
        """Writes committed or failed since the start."""
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_touch = time.time()
        self._later: list[_Write] = []
        """Failed ``retry`` writes, tried again at the next touch (the writer's only)."""

    # ------------------------------------------------------------------ writes
    def submit(self, rec: RequestRecord, state: LedgerState, *,
               insert_row: bool) -> Future[None]:
        """Queue the row of ``rec`` (a new one when ``insert_row``, else an update of
        it); the future is done once it is committed (or holds the database error)."""
        w = _Write(insert_row, row_values(rec, state, self.owner, time.time()), Future())
        self._enqueue(w)
        assert w.done is not None
        return w.done

    def _enqueue(self, w: _Write) -> None:
        """Queue ``w`` for the writer.

        Raises:
            RuntimeError: the ledger is closed, or ``w`` is an insert and
                :data:`MAX_QUEUE` writes wait already (nothing is queued then).
        """
        with self._cv:
            if self._closed:
                raise RuntimeError("the request ledger is closed")
            if w.insert and len(self._queue) >= MAX_QUEUE:
                raise RuntimeError(f"the request ledger is behind: {len(self._queue)}"
                                   " writes wait for the database")
            self._queue.append(w)
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="neocloud-ledger")
                self._thread.start()
            self._cv.notify_all()

    async def write(self, rec: RequestRecord, state: LedgerState, *,
                    insert_row: bool, retry: bool = False,
                    timeout_s: float | None = None) -> None:
        """:meth:`submit` and wait for the commit; ``retry``: when it fails, the writer
        also tries it again at its next touches (an update that must not be lost).
        ``timeout_s``: seconds to wait at most (``None``: until the database answers);
        past it the write stays queued, and an insert is undone by a delete queued after
        it (the caller refuses the request), so a database that hangs (a lock held, a
        host that does not answer) refuses requests instead of holding them forever.

        Raises:
            TimeoutError: not committed within ``timeout_s``.
            Exception: the database error of the transaction the write was in.
        """
        loop = asyncio.get_running_loop()
        w = _Write(insert_row, row_values(rec, state, self.owner, time.time()),
                   loop=loop, waiter=loop.create_future(), retry=retry)
        self._enqueue(w)
        assert w.waiter is not None
        if timeout_s is None:
            await w.waiter
            return
        try:
            await asyncio.wait_for(asyncio.shield(w.waiter), timeout_s)
        except TimeoutError:
            # settled later by the writer: its outcome is read here so none is left unread
            w.waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
            if insert_row:
                self._enqueue(_Write(False, {"id": w.values["id"]}, retry=True, drop=True))
            raise

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every write queued so far is committed (or failed); ``False`` when
        that took longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            target = self._queued
            while self._settled < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, try the failed ``retry`` writes a last time, and stop
        the writer thread (``timeout_s``: seconds to wait for each of the queue and the
        thread)."""
        self.drain(timeout_s)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if not thread.is_alive() and self._later:
                self._last_touch = 0.0  # a touch is due: it carries the retried writes
                self._commit([])

    # ------------------------------------------------------------------ the writer
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    if not self._cv.wait(self.touch_s):
                        break  # idle: time to touch
                if self._closed and not self._queue:
                    return
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            counted = len(batch)
            try:
                self._commit(batch)
            finally:
                with self._cv:
                    self._settled += counted
                    self._cv.notify_all()

    def _commit(self, batch: list[_Write]) -> None:
        """Commit ``batch`` (and, when one is due, the touch and the retried writes) in
        one transaction; on a data error of one write, each write in its own."""
        now = time.time()
        touch = now - self._last_touch >= self.touch_s
        if touch and self._later:
            later, self._later = self._later, []
            for w in later:
                w.tries += 1
            batch = later + batch  # older first: a later write of the same row wins
        try:
            with self.db.engine.begin() as conn:
                _execute(conn, batch)
                if touch:
                    conn.execute(_TOUCH, {"b_owner": self.owner, "b_now": now})
        except (IntegrityError, DataError) as exc:
            log.warning("a request ledger batch failed on one write's data (%s): committing"
                        " its %d writes one by one", exc, len(batch))
            for w in batch:
                self._commit_alone(w)
            if touch:
                self._commit_alone(None, now)
            return
        except Exception as exc:
            if not batch:
                log.warning("the request ledger could not touch its rows: %s", exc)
            self._settle(batch, exc)
            return
        if touch:
            self._last_touch = now
        self._settle(batch, None)

    def _commit_alone(self, w: _Write | None, now: float = 0.0) -> None:
        """Commit one write (``None``: the touch at ``now``) in its own transaction."""
        try:
            with self.db.engine.begin() as conn:
                if w is None:
                    conn.execute(_TOUCH, {"b_owner": self.owner, "b_now": now})
                else:
                    _execute(conn, [w])
        except Exception as exc:
            if w is not None:
                self._settle([w], exc)
            return
        if w is None:
            self._last_touch = now
        else:
            self._settle([w], None)

    def _settle(self, batch: list[_Write], exc: BaseException | None) -> None:
        """Settle every write of ``batch``: one call per event loop for the coroutines
        (one wake-up of each loop, not one per request); a failed ``retry`` write is
        kept for the next touch until it was tried at :data:`RETRIES` of them."""
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for w in batch:
            if exc is not None and w.retry:
                if w.tries < RETRIES:
                    self._later.append(_Write(w.insert, w.values, retry=True,
                                              tries=w.tries, drop=w.drop))
                else:
                    log.error("the request ledger gave up writing request %s: %s",
                              w.values.get("id"), exc)
            if w.done is not None:
                if exc is None:
                    w.done.set_result(None)
                else:
                    w.done.set_exception(exc)
            elif w.loop is not None and w.waiter is not None:
                by_loop.setdefault(w.loop, []).append(w.waiter)
        for loop, waiters in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, waiters, exc)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass


_T: Any = RequestUsage.__table__
_INSERT = _T.insert()
#: How a request ended, in one statement for a whole batch (executemany, in order); a
#: closed row is final (a late ``counting`` never reopens it).
_UPDATE = (update(_T).where(_T.c.id == bindparam("b_id"),
                            _T.c.state != LedgerState.closed.value)
           .values(state=bindparam("b_state"), replica_id=bindparam("b_replica_id"),
                   path=bindparam("b_path"), status=bindparam("b_status"),
                   latency_s=bindparam("b_latency_s"),
                   prompt_tokens=bindparam("b_prompt_tokens"),
                   completion_tokens=bindparam("b_completion_tokens"),
                   seen_at=bindparam("b_seen_at")))
_TOUCH = (update(_T).where(_T.c.owner == bindparam("b_owner"),
                           _T.c.state.in_(UNFINISHED))
          .values(seen_at=bindparam("b_now")))


def _execute(conn: Any, batch: list[_Write]) -> None:
    """Run the writes of ``batch`` on ``conn``: the inserts, then the updates in order,
    then the deletes (each after its row's insert)."""
    inserts = [w.values for w in batch if w.insert]
    updates = [_update_params(w.values) for w in batch if not w.insert and not w.drop]
    drops = [w.values["id"] for w in batch if w.drop]
    if inserts:
        conn.execute(_INSERT, inserts)
    if updates:  # after the inserts: an update never precedes its row's insert
        conn.execute(_UPDATE, updates)
    if drops:
        conn.execute(delete(_T).where(_T.c.id.in_(drops),
                                      _T.c.state == LedgerState.open.value))


def _update_params(values: dict[str, Any]) -> dict[str, Any]:
    return {f"b_{k}": values[k] for k in ("id", "state", "replica_id", "path", "status",
                                          "latency_s", "prompt_tokens",
                                          "completion_tokens", "seen_at")}


__all__ = ["MAX_BATCH", "MAX_QUEUE", "MAX_TOKENS", "PATH_CHARS", "RETRIES", "TOUCH_S", "UNFINISHED",
           "LedgerState", "RequestLedger", "record_of", "row_values", "stored_path",
           "stored_tokens"]
