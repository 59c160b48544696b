"""The queue of a process's SQLite writers (``server/db/sqlite_writers.py``): held exactly
from a transaction's first write to its end, first come first served, on real SQLite
files with real threads.

The deadlines below only bound a wait that would otherwise hang (a failure), none times
the queue.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from neocloud.server.db import sqlite_writers
from neocloud.server.db.engine import Database
from neocloud.server.db.sqlite_writers import WriterQueue, takes_write_lock

#: Bound of a wait that, past it, means the test failed (seconds).
HANG_S = 20.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A database with one table ``log(id, who)``; its queue times out after 5 s, so a
    writer stuck behind a queue that should have been let go fails the test with SQLite's
    error instead of waiting 30 s."""
    d = Database(f"sqlite:///{tmp_path / 'writers.db'}")
    with d.engine.begin() as c:
        c.execute(text("CREATE TABLE log (id INTEGER PRIMARY KEY, who TEXT)"))
    queue_of(d).timeout_s = 5.0
    try:
        yield d
    finally:
        d.dispose()


def queue_of(db: Database) -> WriterQueue:
    path = db.engine.url.database
    assert path is not None
    return sqlite_writers.queue_for(path)


def write(s: Session | Connection, who: str) -> None:
    s.execute(text("INSERT INTO log (who) VALUES (:w)"), {"w": who})


def logged(db: Database) -> list[str]:
    with db.engine.connect() as c:
        return [r[0] for r in c.execute(text("SELECT who FROM log ORDER BY id"))]


def until(cond: Callable[[], bool], what: str) -> None:
    """Wait for ``cond`` (polling); fail after :data:`HANG_S`."""
    deadline = time.monotonic() + HANG_S
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


def in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def finished(t: threading.Thread, errors: list[BaseException]) -> None:
    t.join(HANG_S)
    assert not t.is_alive(), "the writer never got through"
    assert not errors, errors


@pytest.mark.parametrize(("sql", "writes"), [
    ("INSERT INTO log (who) VALUES ('a')", True),
    ("  update log SET who = 'b'", True),
    ("DELETE FROM log", True),
    ("REPLACE INTO log (id, who) VALUES (1, 'c')", True),
    ("-- a comment\n/* another */ (INSERT INTO log (who) VALUES ('d'))", True),
    ("CREATE TABLE x (a)", True),
    ("DROP TABLE x", True),
    ("ALTER TABLE log ADD COLUMN z", True),
    ("BEGIN IMMEDIATE", True),
    ("begin exclusive transaction", True),
    ("WITH x AS (SELECT 1) INSERT INTO log (who) SELECT 'e' FROM x", True),
    ("SELECT * FROM log", False),
    ("WITH x AS (SELECT 1) SELECT * FROM x", False),
    ("BEGIN", False),
    ("BEGIN DEFERRED", False),
    ("SAVEPOINT sa_1", False),
    ("RELEASE SAVEPOINT sa_1", False),
    ("COMMIT", False),
    ("PRAGMA journal_mode=WAL", False),
    ("", False),
])
def test_which_statements_take_the_write_lock(sql: str, writes: bool) -> None:
    assert takes_write_lock(sql) is writes


def test_engines_of_one_process_on_one_file_share_its_queue(db: Database) -> None:
    other = Database(str(db.engine.url))
    try:
        with other.engine.connect() as c:
            assert c.connection.dbapi_connection.writer_queue is queue_of(db)  # type: ignore[union-attr]
    finally:
        other.dispose()


def test_writers_are_served_in_the_order_they_came(db: Database) -> None:
    """Five writers queue behind a held transaction, one after the other; each gets the
    queue in its turn (the order of their rows), one at a time."""
    queue = queue_of(db)
    inside: list[str] = []
    overlap: list[str] = []

    def writer(name: str) -> Callable[[], None]:
        def run() -> None:
            with db.session() as s:
                write(s, name)
                inside.append(name)
                if len(inside) > 1:
                    overlap.append(name)
                time.sleep(0.01)  # hold it a moment: another holder would show here
                inside.remove(name)
        return run

    holder = db.engine.connect()
    write(holder, "holder")
    threads = []
    for i in range(5):
        threads.append(in_thread(writer(f"w{i}")))
        until(lambda n=i + 1: queue.waiting == n, f"{i + 1} writers waiting")  # type: ignore[misc]
    holder.commit()
    holder.close()
    for t, errors in threads:
        finished(t, errors)
    assert logged(db) == ["holder", "w0", "w1", "w2", "w3", "w4"]
    assert overlap == []
    assert queue.holder is None and queue.waiting == 0


def test_a_waiting_writer_goes_before_the_holders_next_transaction(db: Database) -> None:
    """What SQLite's polling busy handler does not give (the fleet benchmark's API writes
    behind the reconciler's back-to-back transactions): a writer that waits is handed the
    queue at the commit, before the committing thread's next transaction takes it."""
    queue = queue_of(db)

    def api_write() -> None:
        with db.session() as s:
            write(s, "api")

    api: tuple[threading.Thread, list[BaseException]] | None = None
    for i in range(3):
        with db.session() as s:
            write(s, f"reconciler {i}")
            if i == 0:
                api = in_thread(api_write)
                until(lambda: queue.waiting == 1, "the API write waiting")
    assert api is not None
    finished(*api)
    assert logged(db) == ["reconciler 0", "api", "reconciler 1", "reconciler 2"]


def test_commit_and_rollback_let_go(db: Database) -> None:
    queue = queue_of(db)
    with db.engine.connect() as c:
        c.execute(text("SELECT * FROM log")).all()
        assert queue.holder is None  # reads do not take it
        write(c, "committed")
        assert queue.holder is c.connection.dbapi_connection
        c.commit()
        assert queue.holder is None
        write(c, "rolled back")
        assert queue.holder is c.connection.dbapi_connection
        c.rollback()
        assert queue.holder is None
    assert logged(db) == ["committed"]


def test_an_exception_inside_a_transaction_lets_go(db: Database) -> None:
    queue = queue_of(db)
    with pytest.raises(ValueError), db.session() as s:
        write(s, "lost")
        assert queue.holder is not None
        raise ValueError("boom")
    assert queue.holder is None
    # a statement that fails inside the transaction: still held until the rollback
    with pytest.raises(OperationalError), db.session() as s:
        write(s, "lost too")
        s.execute(text("INSERT INTO no_such_table VALUES (1)"))
    assert queue.holder is None
    assert logged(db) == []


def test_an_invalidated_connection_lets_go(db: Database) -> None:
    queue = queue_of(db)
    with db.engine.connect() as c:
        write(c, "lost")
        c.invalidate()
    assert queue.holder is None
    with db.session() as s:
        write(s, "next")
    assert logged(db) == ["next"]


def test_a_write_outside_any_transaction_lets_go_at_once(db: Database) -> None:
    queue = queue_of(db)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        write(c, "autocommit")
        assert queue.holder is None
    assert logged(db) == ["autocommit"]


def test_reads_never_wait_on_the_queue(db: Database) -> None:
    queue = queue_of(db)
    with db.engine.connect() as holder:
        write(holder, "uncommitted")
        seen: list[list[str]] = []

        def read() -> None:
            with db.session() as s:
                seen.append([r[0] for r in s.execute(text("SELECT who FROM log"))])

        finished(*in_thread(read))
        assert seen == [[]]
        assert queue.holder is holder.connection.dbapi_connection
        holder.commit()


def test_a_connection_kept_after_its_commit_does_not_hold_the_queue(db: Database) -> None:
    """The queue goes at the commit, not when the connection returns to the pool (the
    first form of the benchmark's experiment: every other writer waited until this
    connection was closed)."""
    queue = queue_of(db)
    with db.engine.connect() as kept:
        write(kept, "kept")
        kept.commit()
        kept.execute(text("SELECT * FROM log")).all()  # still in use, still checked out

        def other() -> None:
            with db.session() as s:
                write(s, "other")

        finished(*in_thread(other))
        assert queue.holder is None
    assert logged(db) == ["kept", "other"]


def test_the_queue_is_not_held_past_the_end_of_sqlites_transaction(db: Database) -> None:
    """The stall of the queue held per connection (to its return to the pool) or per
    SQLAlchemy transaction: a session whose ``begin_nested()`` began SQLite's transaction
    has it committed at the savepoint's ``RELEASE`` (the driver's default transaction
    control; the node metrics sample does that every 10 s) and goes on. A queue still
    held then stalls every other writer, and a write of the same thread through another
    session, which SQLite takes at once, waits for itself until the queue's timeout."""
    queue = queue_of(db)
    with db.session() as s:
        s.execute(text("SELECT * FROM log")).all()
        with s.begin_nested():
            write(s, "in the savepoint")
            assert queue.holder is not None
        # SQLite committed at the RELEASE, the session goes on
        with db.session() as same_thread:
            write(same_thread, "same thread")

        def other() -> None:
            with db.session() as o:
                write(o, "other thread")

        finished(*in_thread(other))
        s.execute(text("SELECT * FROM log")).all()
        assert queue.holder is None
    assert logged(db) == ["in the savepoint", "same thread", "other thread"]


def test_an_after_commit_hook_that_writes_does_not_wait_for_itself(db: Database) -> None:
    """A session's ``after_commit`` hooks (``services/oncommit.py``) run after the commit
    and before the connection returns to the pool: a write there, through another
    session of the same thread, waited the queue's whole timeout when the queue was let go
    at the return to the pool."""
    from neocloud.server.services.oncommit import after_commit

    def hook() -> None:
        with db.session() as s2:
            write(s2, "after the commit")

    with db.session() as s:
        write(s, "the transaction")
        after_commit(s, hook, what="a write")
    assert logged(db) == ["the transaction", "after the commit"]


def test_a_second_write_connection_of_the_same_thread_gets_sqlites_error(
        db: Database) -> None:
    """A thread that writes through a second connection while its own write transaction
    is open waits for itself (SQLite alone: the busy timeout, then ``database is
    locked``): after the queue's timeout it gets that same error, which names the cause;
    the first transaction is unharmed and the queue is free after it."""
    queue = queue_of(db)
    queue.timeout_s = 0.3
    with db.engine.connect() as first:
        write(first, "first")
        with pytest.raises(OperationalError, match="database is locked") as err, \
                db.session() as second:
            write(second, "second")
        assert "this thread" in str(err.value)
        assert queue.waiting == 0
        assert queue.holder is first.connection.dbapi_connection
        first.commit()
    assert queue.holder is None
    assert logged(db) == ["first"]


def test_a_transaction_another_thread_ends_is_waited_for(db: Database) -> None:
    """Why the queue does not refuse a thread that "holds" it at once: a route's session
    is written by one worker thread and committed by another (``deps.get_session``), and
    the writing thread may meanwhile serve another request and write."""
    queue = queue_of(db)
    conn = db.engine.connect()
    write(conn, "first request")  # this thread wrote it...

    def second_request() -> None:
        with db.session() as s:
            write(s, "second request")

    t, errors = in_thread(second_request)
    until(lambda: queue.waiting == 1, "the second request waiting")
    # ... and another one commits it: here the test thread hands it over
    def end_first_request() -> None:
        conn.commit()
        conn.close()

    finished(*in_thread(end_first_request))
    finished(t, errors)
    assert logged(db) == ["first request", "second request"]


def test_a_writer_that_waits_past_the_timeout_gets_sqlites_error(db: Database) -> None:
    queue = queue_of(db)
    queue.timeout_s = 0.2
    with db.engine.connect() as holder:
        write(holder, "holder")
        got: list[BaseException] = []

        def late() -> None:
            try:
                with db.session() as s:
                    write(s, "late")
            except OperationalError as e:
                got.append(e)

        finished(*in_thread(late))
        assert len(got) == 1 and "database is locked" in str(got[0])
        assert queue.waiting == 0
        holder.commit()
    assert logged(db) == ["holder"]


def test_a_connection_lost_without_close_frees_the_queue(db: Database) -> None:
    path = db.engine.url.database
    assert path is not None
    queue = queue_of(db)
    raw = sqlite_writers.QueuedConnection(path, writer_queue=queue)
    raw.execute("INSERT INTO log (who) VALUES ('lost')")
    assert queue.holder is raw
    del raw
    gc.collect()
    with db.session() as s:
        write(s, "next")
    assert logged(db) == ["next"]


def test_another_process_still_arbitrated_by_sqlites_lock(db: Database) -> None:
    """The queue is per process: a writer of another process holds SQLite's lock, this
    process's first writer waits on it (SQLite's busy handler) holding the queue, the
    next waits in the queue; both write once the other process commits."""
    path = db.engine.url.database
    queue = queue_of(db)
    script = ("import sqlite3, sys\n"
              f"c = sqlite3.connect({path!r}, isolation_level=None)\n"
              "c.execute('BEGIN IMMEDIATE')\n"
              "c.execute(\"INSERT INTO log (who) VALUES ('other process')\")\n"
              "print('locked', flush=True)\n"
              "sys.stdin.readline()\n"
              "c.execute('COMMIT')\n")
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as other:
        assert other.stdout is not None and other.stdin is not None
        try:
            assert other.stdout.readline().strip() == "locked"

            def writer(name: str) -> Callable[[], None]:
                def run() -> None:
                    with db.session() as s:
                        write(s, name)
                return run

            first = in_thread(writer("first"))
            until(lambda: queue.holder is not None, "the first writer holding the queue")
            second = in_thread(writer("second"))
            until(lambda: queue.waiting == 1, "the second writer in line")
            other.stdin.write("\n")
            other.stdin.flush()
            finished(*first)
            finished(*second)
        finally:
            if other.poll() is None:
                other.stdin.close()
            other.wait(HANG_S)
    assert logged(db) == ["other process", "first", "second"]
