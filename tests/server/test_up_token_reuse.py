"""A restart of ``neocloud up`` on a data folder reuses the admin token it saved there.

Found: every restart with ``--home X`` (the shell's ``NEOCLOUD_HOME`` not X) created
another admin token (``admin-3`` ... ``admin-6``) and the old ones stayed valid: ``up``
looked for the saved token only in the shell's config folder. Now it reads X's config,
reuses a token that still works, creates one only when none is saved or it was revoked,
and says which it did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import delete

from neocloud.server import launch
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Token
from neocloud.server.services import workspaces as ws_svc
from tests.conftest import free_port


def _up(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        home: Path) -> str:
    monkeypatch.setattr(launch, "_run", lambda settings, **kw: None)  # start, don't serve
    launch.up(port=free_port(), home=home)
    return " ".join(capsys.readouterr().err.split())


def _admin_tokens(home: Path) -> list[str]:
    db = Database(f"sqlite:///{home / 'neocloud.db'}")
    try:
        with db.session() as s:
            ws = ws_svc.get_workspace(s, name="default")
            return [t.name for t in ws_svc.list_tokens(s, workspace_id=ws.id)]
    finally:
        db.dispose()


def _saved_token(home: Path) -> str:
    token: str = json.loads((home / "config.json").read_text())["token"]
    return token


@pytest.fixture
def other_shell_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``up --home X`` from a shell whose CLI folder is another one."""
    monkeypatch.setenv("NEOCLOUD_HOME", str(tmp_path / "shell-home"))
    monkeypatch.setenv("NEOCLOUD_REGISTER_LOCAL_NODE", "false")
    return tmp_path / "cloud"


def test_restarts_reuse_the_saved_admin_token(
        other_shell_home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    home = other_shell_home
    first = _up(monkeypatch, capsys, home)
    token = _saved_token(home)
    assert f"admin token admin-1 (shown once): {token}" in first
    for _ in range(3):
        again = _up(monkeypatch, capsys, home)
        assert "admin-1, reused from this data folder's config" in again, again
        assert "nc_" not in again  # no secret printed
    assert _admin_tokens(home) == ["admin-1"]
    assert _saved_token(home) == token
    assert not (home.parent / "shell-home" / "config.json").exists()


def test_a_revoked_saved_token_is_replaced(
        other_shell_home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    home = other_shell_home
    _up(monkeypatch, capsys, home)
    old = _saved_token(home)
    db = Database(f"sqlite:///{home / 'neocloud.db'}")
    try:
        with db.session() as s:
            ws = ws_svc.get_workspace(s, name="default")
            # out of band: the API keeps the last operator admin token (409)
            s.execute(delete(Token).where(Token.workspace_id == ws.id, Token.name == "admin-1"))
    finally:
        db.dispose()
    err = _up(monkeypatch, capsys, home)
    new = _saved_token(home)
    assert new != old
    assert "admin token admin-1 (shown once; the saved one no longer works" in err, err
    assert new in err
    assert _admin_tokens(home) == ["admin-1"]
