"""``neocloud up --home X`` tells how other shells reach the cloud it logged the CLI in to.

Found: ``up --home X`` printed "the CLI is logged in (config: X/config.json)", but a plain
``neocloud ls`` in the same shell then failed (``cannot reach http://127.0.0.1:8700``): the
CLI reads ``$NEOCLOUD_HOME`` or ``~/.neocloud``, not X. The message now says to export
``NEOCLOUD_HOME=X`` when X is not the folder a plain CLI reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from neocloud.server import launch
from tests.conftest import free_port


def _up(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        home: Path) -> str:
    monkeypatch.setattr(launch, "_run", lambda settings, **kw: None)  # start, don't serve
    launch.up(port=free_port(), home=home)
    return " ".join(capsys.readouterr().err.split())


def test_up_with_another_home_says_to_export_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("NEOCLOUD_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    home = tmp_path / "my cloud"
    err = _up(monkeypatch, capsys, home)
    assert f"the CLI is logged in (config: {home / 'config.json'})" in err
    assert f"run `export NEOCLOUD_HOME='{home}'`" in err
    assert (home / "config.json").exists()
    assert not (tmp_path / "user" / ".neocloud").exists()


def test_up_on_the_shell_home_needs_no_export(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEOCLOUD_HOME", str(tmp_path))
    err = _up(monkeypatch, capsys, tmp_path)
    assert "the CLI is logged in" in err and "export NEOCLOUD_HOME" not in err


def test_login_message_compares_resolved_folders(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    assert "export" not in launch.login_message(cfg, tmp_path / "a" / "..", tmp_path)
    assert "export NEOCLOUD_HOME=" in launch.login_message(cfg, tmp_path / "b", tmp_path)
