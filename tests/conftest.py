"""Fixtures shared by the server tests: a database (SQLite, and PostgreSQL when
``NEOCLOUD_TEST_DATABASE_URL`` is set), a control plane in-process, and one on a real port.

Databases: the schema of the newest migration is built once per test process (a SQLite
template file, copied for each test; PostgreSQL: the first test migrates, later tests empty
every table), so each test starts from the same migrated, empty database without paying for
the migrations again. ``empty_db_url`` is a database with no schema at all (the migration
tests).

Parallel runs (``pytest -n N --dist loadscope --no-loadscope-reorder``, as ``make test``
runs): each pytest-xdist worker uses a PostgreSQL database of its own, ``<name>_<worker>``
(e.g. ``test_gw0``), created on first use; the tests of one group (:data:`GROUPS`: the Ray
tests, the vLLM tests, else each module) run in one worker, the groups with slow tests
first.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import create_engine, make_url, text

pytest_plugins = ["tests.vllm_server"]

BASE_PG_URL = os.environ.get("NEOCLOUD_TEST_DATABASE_URL")


def _worker_id() -> str | None:
    """The pytest-xdist worker of this process (``gw0``, ...), ``None`` when not parallel."""
    return os.environ.get("PYTEST_XDIST_WORKER") or None


def _worker_pg_url(base: str | None) -> str | None:
    """``base``, or under a pytest-xdist worker the database ``<name>_<worker>`` of the same
    server (workers never share the database their fixtures empty)."""
    worker = _worker_id()
    if not base or not worker:
        return base
    url = make_url(base)
    return url.set(database=f"{url.database}_{worker}").render_as_string(hide_password=False)


PG_URL = _worker_pg_url(BASE_PG_URL)


def _ensure_pg_database(url: str) -> None:
    """Create the worker's database on the server of ``NEOCLOUD_TEST_DATABASE_URL`` when it
    does not exist yet (needs the CREATEDB right)."""
    assert BASE_PG_URL is not None
    name = make_url(url).database
    engine = create_engine(BASE_PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                 {"n": name}).scalar()
            if not found:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


def _reset_postgres(url: str) -> None:
    """Drop everything: an empty ``public`` schema."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@functools.cache
def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    from neocloud.server.db.engine import MIGRATIONS, alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head, MIGRATIONS
    return head


@functools.cache
def _expected_tables() -> frozenset[str]:
    from neocloud.server.db.tables import Base

    return frozenset(Base.metadata.tables) | {"alembic_version"}


def _empty_postgres_rows(url: str) -> bool:
    """Empty every table of a database already at the newest migration and restart its
    sequences, in one transaction. ``False`` (nothing done) when the schema is not exactly
    that one or the rows cannot be deleted.

    ``DELETE`` in reverse foreign-key order, not ``TRUNCATE``: the tables of a test hold a
    few rows, and ``TRUNCATE`` of every table costs as much as migrating anew.
    """
    from sqlalchemy.exc import DBAPIError

    from neocloud.server.db.tables import Base

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            tables = set(conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
            if tables != _expected_tables():
                return False
            versions = list(conn.execute(text("SELECT version_num FROM alembic_version"))
                            .scalars())
            if versions != [_head_revision()]:
                return False
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(text(f'DELETE FROM "{table.name}"'))
            for seq in conn.execute(text(
                    "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
            )).scalars().all():
                conn.execute(text(f'ALTER SEQUENCE "{seq}" RESTART'))
        return True
    except DBAPIError:
        return False
    finally:
        engine.dispose()


def _migrated_postgres(url: str) -> str:
    """``url`` with the newest schema and no rows."""
    if not _empty_postgres_rows(url):
        from neocloud.server.db.engine import Database, migrate

        _reset_postgres(url)
        db = Database(url)
        try:
            migrate(db.engine)
        finally:
            db.dispose()
    return url


@pytest.fixture(scope="session")
def _pg_server() -> str | None:
    """The PostgreSQL URL of this test process (its database created when missing)."""
    if PG_URL and PG_URL != BASE_PG_URL:
        _ensure_pg_database(PG_URL)
    return PG_URL


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest migration, no rows (copied by ``db_url``)."""
    from neocloud.server.db.engine import make_engine, migrate

    path = tmp_path_factory.mktemp("db-template") / "neocloud.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()  # the last connection closed: the WAL is folded into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


def _sqlite_copy(template: Path, tmp_path: Path) -> str:
    target = tmp_path / "neocloud.db"
    shutil.copyfile(template, target)
    os.chmod(target, 0o600)
    return f"sqlite:///{target}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, _sqlite_template: Path) -> str:
    """A fresh database URL of each kind: the newest schema, no rows."""
    if request.param == "sqlite":
        return _sqlite_copy(_sqlite_template, tmp_path)
    pg = request.getfixturevalue("_pg_server")
    if not pg:
        pytest.skip("NEOCLOUD_TEST_DATABASE_URL is not set")
    return _migrated_postgres(pg)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL of each kind with nothing in it, not even a schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'neocloud.db'}"
    pg = request.getfixturevalue("_pg_server")
    if not pg:
        pytest.skip("NEOCLOUD_TEST_DATABASE_URL is not set")
    _reset_postgres(pg)
    return pg


@pytest.fixture
def sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """A fresh SQLite database URL: the newest schema, no rows."""
    return _sqlite_copy(_sqlite_template, tmp_path)


#: Tests that must share one pytest-xdist worker, by group: prefixes of their paths. ``ray``:
#: the Ray clusters on fixed loopback addresses (and the session's cluster, built once);
#: ``vllm``: the one vLLM server of :mod:`tests.vllm_server`. Every other module is a group
#: of its own (its module-scoped fixtures are built once, as in a serial run).
GROUPS: dict[str, tuple[str, ...]] = {
    "ray": ("tests/backends/", "tests/e2e/test_ray_e2e.py"),
    "vllm": ("tests/e2e/test_vllm_deployment.py",
             "tests/integration/serving/test_serving_vllm.py"),
}


def group_of(nodeid: str) -> str:
    """The pytest-xdist group of a test (see :data:`GROUPS`)."""
    path = nodeid.split("::", 1)[0]
    for name, prefixes in GROUPS.items():
        if path.startswith(prefixes):
            return name
    return path


if importlib.util.find_spec("xdist") is not None:

    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
        """``--dist loadscope``: whole groups (:func:`group_of`) go to one worker each.

        (pytest-xdist's own ``loadgroup`` marks groups by rewriting node ids, which this
        pytest's node ids do not take.)"""
        if config.getvalue("dist") != "loadscope":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
            def _split_scope(self, nodeid: str) -> str:
                return group_of(nodeid)

        return GroupScheduling(config, log)


#: The longest groups of a full run (minutes each: vLLM's start, the Ray clusters, the
#: time-bounded fuzz run, the load-following e2e tests), started first in this order.
LONGEST_FIRST = ("vllm", "ray", "tests/fuzz/test_schemathesis.py", "tests/e2e/test_scale_zero.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, :data:`LONGEST_FIRST` first, then the other groups holding a
    ``slow`` test, then the rest (with ``--no-loadscope-reorder``, as ``make test`` runs:
    the longest work starts early and the quick tests fill the workers at the end)."""
    if not _worker_id():
        return
    slow = {group_of(item.nodeid) for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        group = group_of(item.nodeid)
        if group in LONGEST_FIRST:
            return 0, LONGEST_FIRST.index(group)
        return (1 if group in slow else 2), 0

    items.sort(key=rank)  # stable: collection order within a rank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A uvicorn server on loopback in a thread of the test process."""

    def __init__(self, app: object, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def live_server_factory() -> Iterator[object]:
    servers: list[LiveServer] = []

    def make(app: object) -> LiveServer:
        srv = LiveServer(app, free_port()).start()
        servers.append(srv)
        return srv

    yield make
    for srv in reversed(servers):
        srv.stop()
