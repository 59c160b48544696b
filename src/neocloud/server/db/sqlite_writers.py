"""A fair queue of one process's SQLite writers.

SQLite lets one connection write at a time, and a writer that finds the write lock taken
does not wait in line: SQLite's busy handler sleeps and tries again (1, 2, 5, 10, 15, 20,
25, 25, 25, 50, 50, then 100 ms between tries: ``sqliteDefaultBusyCallback`` in SQLite's
``main.c``). While the reconciler commits transaction after transaction with gaps far
shorter than those sleeps, an API writer misses gap after gap: in the fleet benchmark
(``benchmarks/fleet/README.md``, third round) an API write waited 1.4 s for the lock at
p99 while the reconciler held it 57 ms at p99. Here the writers of a process wait in turn
on one :class:`WriterQueue` per database file, and the next in line is handed the queue
the moment the holder's transaction ends.

Invariant: **the queue is held exactly from a transaction's first write to its end.**

- *Its first write*: the first statement that takes SQLite's write lock
  (:func:`takes_write_lock`: ``INSERT``, ``UPDATE``, ``DELETE``, ``REPLACE``, a ``WITH``
  that does one of them, DDL, ``BEGIN IMMEDIATE``/``EXCLUSIVE``). The queue is taken just
  before that statement runs, so SQLite's lock is free when it does (save for another
  process). Reads never wait on the queue.
- *Its end*: the moment the connection leaves its transaction, as SQLite sees it
  (``sqlite3.Connection.in_transaction``, checked after every statement): a commit, a
  rollback, a ``COMMIT``/``ROLLBACK`` statement, the ``RELEASE`` of a savepoint that began
  the transaction, the automatic rollback that follows some errors, the end of a write
  run outside a transaction, or closing the connection. Not when the connection returns
  to the pool, and not at the end of SQLAlchemy's transaction: a ``Session`` whose
  ``begin_nested()`` began SQLite's transaction has it committed by the driver at the
  savepoint's ``RELEASE`` while the session's transaction goes on (the node metrics sample
  does that every 10 s), and a ``Session``'s ``after_commit`` hooks run after the commit but
  before the connection goes back. A queue held past SQLite's lock stalls every other
  writer for nothing, and a writer of the same thread, whose write SQLite would take at
  once, then waits for itself until the timeout (the first form of the benchmark's
  experiment, which let go only when the connection went back to the pool).

The holder is a connection, not a thread: a route's session (``deps.get_session``, a
generator dependency) is opened, used and committed by up to three worker threads of the
server's pool, and the thread that wrote may serve another request meanwhile.

Design choices:

- **Why a queue, not ``BEGIN IMMEDIATE``.** The driver (``sqlite3``, its default
  transaction control) already begins a transaction just before the first ``INSERT``,
  ``UPDATE``, ``DELETE`` or ``REPLACE`` (the reads before it run outside any transaction),
  so SQLite's lock is taken at the first write either way; ``BEGIN IMMEDIATE`` would take
  it at that same moment, through the same polling busy handler. Fairness comes from how
  writers wait, not from when the lock is taken; ``BEGIN IMMEDIATE`` at the start of every
  session would make reads wait too.
- **A connection that writes while another connection of the same thread holds the
  queue** waits for itself: the holder's transaction cannot end while its thread waits.
  It is not re-entrant per thread: the second connection would pass the queue and wait on
  SQLite's lock, which the first still holds, for the busy timeout, to the same error, with
  two holders at once. Nor is it refused at once: the holder may be a connection another
  thread ends (a route's session, above), which a thread cannot tell from its own. It
  waits the timeout, as SQLite would, and gets SQLite's error, whose message says when the
  waiting thread is the one that took the queue.
- **Timeout.** A writer that waits longer than ``timeout_s`` (SQLite's busy timeout,
  :data:`BUSY_TIMEOUT_S`) gets ``sqlite3.OperationalError("database is locked ...")``, the
  error SQLite gives (SQLAlchemy raises it as its ``OperationalError``); nothing ran.
- **Several processes on one file**: the queue is per process (one per file in it, shared
  by every engine of the process on that file); SQLite's lock and busy timeout still
  arbitrate between processes, and the queue's holder may wait on it.
- **A connection lost without a close** (garbage collected): the queue refers to its
  holder weakly, and the first waiter takes the queue over once the holder is gone
  (checked every :data:`DEAD_HOLDER_CHECK_S`).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
"""SQLite's busy timeout of the control plane's connections, and the longest a writer
waits for the queue, seconds."""

DEAD_HOLDER_CHECK_S = 1.0
"""How often a waiter checks whether the holder was garbage collected, seconds."""

_WRITE_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP",
                             "ALTER", "REINDEX", "VACUUM", "ANALYZE"})
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.DOTALL)
_WORD = re.compile(r"[A-Za-z]+")
_SPACE = re.compile(r"\s*")
_DML_WORD = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


def takes_write_lock(statement: str) -> bool:
    """Whether ``statement`` takes SQLite's write lock: it writes rows or the schema, or
    is ``BEGIN IMMEDIATE``/``EXCLUSIVE``. Leading blanks, comments and parentheses are
    skipped; a ``WITH`` counts when an ``INSERT``, ``UPDATE``, ``DELETE`` or ``REPLACE``
    appears in it (a read it wrongly counts only waits in the queue). ``PRAGMA`` does not
    count (the connection's set-up, which may run while the same thread holds the queue
    through another connection)."""
    start = _LEADING.match(statement)
    first = _WORD.match(statement, start.end() if start else 0)
    if first is None:
        return False
    word = first.group().upper()
    if word in _WRITE_KEYWORDS:
        return True
    if word == "BEGIN":
        second = _WORD.match(statement, _SPACE.match(statement, first.end()).end())  # type: ignore[union-attr]
        return second is not None and second.group().upper() in ("IMMEDIATE", "EXCLUSIVE")
    if word == "WITH":
        return _DML_WORD.search(statement, first.end()) is not None
    return False


@dataclass(eq=False)
class _Waiter:
    """One writer in line: ``wake`` is released when the queue is handed to it."""

    conn: object
    wake: Any = field(default_factory=threading.Lock)
    granted: bool = False


class WriterQueue:
    """A first-in, first-out lock of connections, handed directly to the next waiter on
    release (no writer overtakes one that waits), with a timeout.

    Not re-entrant: a connection holds it once (:class:`QueuedConnection` takes it at
    most once per transaction).
    """

    def __init__(self, timeout_s: float = BUSY_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._mutex = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._holder: weakref.ref[object] | None = None
        self._holder_thread = ""
        self._holder_ident = 0
        self._held_since = 0.0

    @property
    def holder(self) -> object | None:
        """The connection that holds the queue now, ``None`` when it is free."""
        ref = self._holder
        return ref() if ref is not None else None

    @property
    def waiting(self) -> int:
        """How many writers wait in line now."""
        return len(self._waiters)

    def acquire(self, conn: object) -> float:
        """Take the queue for ``conn``, after every writer already waiting; returns the
        seconds waited.

        Raises:
            sqlite3.OperationalError: ``database is locked``: not handed the queue within
                ``timeout_s`` (SQLite's error for a lock not got within its busy timeout).
        """
        t0 = time.monotonic()
        with self._mutex:
            self._drop_dead_holder()
            if self._holder is None:
                self._grant(conn)
                return 0.0
            waiter = _Waiter(conn)
            waiter.wake.acquire()
            self._waiters.append(waiter)
        deadline = t0 + self.timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or waiter.wake.acquire(timeout=min(left, DEAD_HOLDER_CHECK_S)):
                    break
                with self._mutex:
                    self._drop_dead_holder()
                    if waiter.granted:
                        break
        except BaseException:  # interrupted: out of the line, or the queue handed on
            with self._mutex:
                if waiter.granted:
                    self._hand_on()
                else:
                    self._waiters.remove(waiter)
            raise
        with self._mutex:  # on a timeout the queue may have been handed over meanwhile
            if not waiter.granted:
                self._waiters.remove(waiter)
                raise self._timed_out(time.monotonic() - t0)
            self._grant(conn)
        return time.monotonic() - t0

    def release(self, conn: object) -> None:
        """Let go of the queue held by ``conn``: the first waiter, if any, holds it now.
        A connection that does not hold it changes nothing (logged: a bug, which must not
        turn the commit that called this into an error)."""
        with self._mutex:
            if self.holder is not conn:
                log.error("a SQLite connection let go of a writer queue it did not hold")
                return
            self._hand_on()

    def _grant(self, conn: object) -> None:
        thread = threading.current_thread()
        self._holder = weakref.ref(conn)
        self._holder_thread, self._holder_ident = thread.name, thread.ident or 0
        self._held_since = time.monotonic()

    def _hand_on(self) -> None:
        """(Under the mutex) give the queue to the first waiter, or free it."""
        if not self._waiters:
            self._holder = None
            return
        waiter = self._waiters.popleft()
        self._holder = weakref.ref(waiter.conn)
        self._held_since = time.monotonic()
        # its thread is recorded once awake (_grant), not the one running this
        self._holder_thread, self._holder_ident = "", 0
        waiter.granted = True
        waiter.wake.release()

    def _drop_dead_holder(self) -> None:
        """(Under the mutex) hand the queue on when its holder was garbage collected."""
        if self._holder is not None and self._holder() is None:
            log.warning("a SQLite connection was lost holding the writer queue (no commit, "
                        "rollback or close); the queue goes to the next writer")
            self._hand_on()

    def _timed_out(self, waited_s: float) -> sqlite3.OperationalError:
        held_s = time.monotonic() - self._held_since
        why = (f"database is locked: waited {waited_s:.1f} s for this process's SQLite "
               f"writer queue, held for {held_s:.1f} s by a write transaction of thread "
               f"{self._holder_thread or '?'}")
        if self._holder_ident and self._holder_ident == threading.get_ident():
            why += (" (this thread: it writes through a second connection while its own "
                    "write transaction is open, and waits for itself)")
        log.warning("%s", why)
        return sqlite3.OperationalError(why)


_QUEUES: weakref.WeakValueDictionary[str, WriterQueue] = weakref.WeakValueDictionary()
_QUEUES_LOCK = threading.Lock()


def queue_for(database: str, *, timeout_s: float = BUSY_TIMEOUT_S) -> WriterQueue:
    """The queue of this process for the SQLite database ``database`` (a file path, or a
    ``file:`` URI): one per file, whichever engine opens it (kept while any uses it)."""
    key = database if database.startswith("file:") else os.path.realpath(database)
    with _QUEUES_LOCK:
        queue = _QUEUES.get(key)
        if queue is None:
            queue = _QUEUES[key] = WriterQueue(timeout_s)
        return queue


class QueuedCursor(sqlite3.Cursor):
    """A cursor of a :class:`QueuedConnection`: a statement that takes the write lock
    first takes the connection's place in the queue."""

    def execute(self, sql: str, parameters: Any = (), /) -> QueuedCursor:
        conn = self.connection
        assert isinstance(conn, QueuedConnection)
        conn.before(sql)
        try:
            super().execute(sql, parameters)
        finally:
            conn.settle()
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> QueuedCursor:
        conn = self.connection
        assert isinstance(conn, QueuedConnection)
        conn.before(sql)
        try:
            super().executemany(sql, seq_of_parameters)
        finally:
            conn.settle()
        return self

    def executescript(self, sql_script: str, /) -> QueuedCursor:
        conn = self.connection
        assert isinstance(conn, QueuedConnection)
        conn.before("INSERT")  # a script may write anything: counted as a write
        try:
            super().executescript(sql_script)
        finally:
            conn.settle()
        return self


class QueuedConnection(sqlite3.Connection):
    """A ``sqlite3`` connection that holds ``writer_queue`` from its transaction's first
    write to the transaction's end (module docstring). Its cursors are
    :class:`QueuedCursor` (a cursor of another class bypasses the queue)."""

    def __init__(self, *args: Any, writer_queue: WriterQueue, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.writer_queue = writer_queue
        self.holds_queue = False
        """Whether this connection holds the queue (only its own thread changes it)."""

    def before(self, sql: str) -> None:
        """Take the queue before ``sql`` when it is this transaction's first write.

        Raises:
            sqlite3.OperationalError: the queue's timeout passed (see :class:`WriterQueue`).
        """
        if not self.holds_queue and takes_write_lock(sql):
            self.writer_queue.acquire(self)
            self.holds_queue = True

    def settle(self) -> None:
        """Let go of the queue when the transaction is over."""
        if self.holds_queue and not self.in_transaction:
            self._let_go()

    def _let_go(self) -> None:
        self.holds_queue = False
        self.writer_queue.release(self)

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or QueuedCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        return self.cursor().executescript(sql_script)

    def commit(self) -> None:
        try:
            super().commit()
        except BaseException:  # the transaction stays open, unless SQLite rolled it back
            self.settle()
            raise
        if self.holds_queue:
            self._let_go()

    def rollback(self) -> None:
        try:
            super().rollback()
        except BaseException:
            self.settle()
            raise
        if self.holds_queue:
            self._let_go()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.holds_queue:
                self._let_go()


def connection_factory(queue: WriterQueue) -> Callable[..., QueuedConnection]:
    """The ``factory`` argument of ``sqlite3.connect`` for connections queued on
    ``queue`` (``create_engine(..., connect_args={"factory": ...})``)."""
    return functools.partial(QueuedConnection, writer_queue=queue)
