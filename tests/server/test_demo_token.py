"""The demo leaves its data folder behind; its admin token is revoked before the cloud
stops, so the copy in ``config.json`` and ``up.log`` is refused afterwards."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from neocloud import Client
from neocloud.errors import Unauthenticated
from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from tests.server.helpers import make_settings

DEMO = Path(__file__).parents[2] / "demo" / "stdlib_search.py"


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stdlib_search_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_demo_revokes_its_admin_token(tmp_path: Path, sqlite_url: str,
                                          live_server_factory) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(tmp_path / "home", sqlite_url),
                     backends={"fake": FakeBackend()}, run_reconcilers=False)
    srv = live_server_factory(app)
    token = bootstrap(app.state.db).token
    cloud = Client(srv.url, token)
    line = _demo().retire_token(cloud, tmp_path / "home")
    assert line.startswith("admin token admin-1 revoked") and "config.json" in line
    with pytest.raises(Unauthenticated):
        Client(srv.url, token).whoami()
    # once it is gone, the line says where the token is rather than failing
    line = _demo().retire_token(cloud, tmp_path / "home")
    assert "could not be revoked" in line and "up.log" in line
