"""Fixtures shared by the server tests: a database (SQLite, and PostgreSQL when
``NEOCLOUD_TEST_DATABASE_URL`` is set), a control plane in-process, and one on a real port."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("NEOCLOUD_TEST_DATABASE_URL")


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'neocloud.db'}"
    if not PG_URL:
        pytest.skip("NEOCLOUD_TEST_DATABASE_URL is not set")
    _reset_postgres(PG_URL)
    return PG_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'neocloud.db'}"


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
