"""One control plane per SQLite database file, whatever data folder it was given.

Found: ``NEOCLOUD_DATABASE_URL=sqlite:////A/neocloud.db neocloud up --home B`` started
while the control plane of data folder A ran on that file: the lock was per data folder
only. Now the second start is refused, naming the database and the holder's pid;
PostgreSQL is not locked (several copies share one by design).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from neocloud.server import launch
from neocloud.server.homelock import DatabaseInUse, hold_database, sqlite_file
from tests.conftest import free_port


def test_a_second_up_on_the_first_ones_database_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEOCLOUD_HOME", str(tmp_path / "shell-home"))
    monkeypatch.setenv("NEOCLOUD_REGISTER_LOCAL_NODE", "false")
    first_home, other_home = tmp_path / "home", tmp_path / "other"
    refused: list[BaseException] = []

    def while_the_first_runs(settings: Any, **kw: Any) -> None:
        if settings.home != first_home:
            return  # the second start got this far: not refused
        with monkeypatch.context() as m:
            # another spelling of the same file: '..' and a double slash
            m.setenv("NEOCLOUD_DATABASE_URL",
                     f"sqlite:///{other_home}/..//home/neocloud.db")
            try:
                launch.up(port=free_port(), home=other_home)
            except DatabaseInUse as exc:
                refused.append(exc)

    monkeypatch.setattr(launch, "_run", while_the_first_runs)
    launch.up(port=free_port(), home=first_home)
    assert refused, "the second control plane started on the first one's database"
    err = refused[0]
    assert isinstance(err, DatabaseInUse) and err.code == "database_in_use"
    assert str(first_home / "neocloud.db") in err.message
    assert f"pid {os.getpid()}" in err.message
    assert not (other_home / "config.json").exists()
    # released when the first one stops
    lock = hold_database(f"sqlite:///{first_home / 'neocloud.db'}", url="http://x")
    assert lock is not None
    lock.close()


def test_only_sqlite_files_are_locked(tmp_path: Path) -> None:
    pg = "postgresql+psycopg://postgres@127.0.0.1:5432/neocloud"
    assert sqlite_file(pg) is None and hold_database(pg, url="http://x") is None
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file(f"sqlite:///{tmp_path}/a/../b.db") == tmp_path.resolve() / "b.db"
    first = hold_database(f"sqlite:///{tmp_path}/b.db", url="http://x")
    try:
        with pytest.raises(DatabaseInUse):
            hold_database(f"sqlite:///{tmp_path}/b.db", url="http://y")
    finally:
        assert first is not None
        first.close()
