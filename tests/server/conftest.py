from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from neocloud.cli import output
from neocloud.cli.context import CliState
from neocloud.cli.main import app as cli_app
from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from tests.server.helpers import Cloud, make_settings, open_cloud


@pytest.fixture
def cloud(tmp_path: Path, db_url: str) -> Iterator[Cloud]:
    c, client = open_cloud(tmp_path / "home", db_url)
    try:
        yield c
    finally:
        client.__exit__(None, None, None)


@pytest.fixture
def ray_cloud(tmp_path: Path, db_url: str) -> Iterator[Cloud]:
    """A cloud whose ``ray`` nodes (``POST /nodes/join``) run work on the fake backend."""
    c, client = open_cloud(tmp_path / "home", db_url, fake_serves=("fake", "ray"))
    try:
        yield c
    finally:
        client.__exit__(None, None, None)


def _live_cli(tmp_path: Path, db_url: str, live_server_factory, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NEOCLOUD_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setattr(output.out, "width", 200)
    monkeypatch.setattr(output.err, "width", 200)
    app = create_app(make_settings(tmp_path / "home", db_url),
                     backends={"fake": FakeBackend()}, run_reconcilers=False)
    srv = live_server_factory(app)
    token = bootstrap(app.state.db).token

    def run(*args: str, token: str = token) -> Result:
        state = CliState()
        state.url, state.token = srv.url, token
        return CliRunner().invoke(cli_app, list(args), obj=state, catch_exceptions=False,
                                  env={"COLUMNS": "200"})

    run.app = app  # type: ignore[attr-defined]
    return run


@pytest.fixture
def cli(tmp_path: Path, sqlite_url: str, live_server_factory, monkeypatch):  # type: ignore[no-untyped-def]
    """The CLI against a live control plane on SQLite with the fake backend, logged in
    as its admin: ``cli("invoice", "--json")`` returns the typer ``Result``
    (``token=`` runs it with another token); ``cli.app`` is the control plane's app (its
    database for direct writes)."""
    return _live_cli(tmp_path, sqlite_url, live_server_factory, monkeypatch)


@pytest.fixture
def cli_db(tmp_path: Path, db_url: str, live_server_factory, monkeypatch):  # type: ignore[no-untyped-def]
    """:func:`cli` on each database (SQLite, and PostgreSQL when configured)."""
    return _live_cli(tmp_path, db_url, live_server_factory, monkeypatch)
