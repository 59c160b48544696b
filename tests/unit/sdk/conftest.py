"""Fixtures of the SDK tests: the real control plane (see ``realcloud.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.asgi_client import real_cloud
from tests.unit.sdk.realcloud import RealCloud, Recording

from neocloud.sdk import Client
from neocloud.server.backends import FakeBackend


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own NEOCLOUD_HOME and no connection settings from outside."""
    home = tmp_path / "home"
    monkeypatch.setenv("NEOCLOUD_HOME", str(home))
    monkeypatch.delenv("NEOCLOUD_URL", raising=False)
    monkeypatch.delenv("NEOCLOUD_TOKEN", raising=False)
    return home


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[RealCloud]:
    transport, token, app = real_cloud(tmp_path / "cloud", f"sqlite:///{tmp_path / 'nc.db'}")
    fake = app.state.backends["fake"]
    assert isinstance(fake, FakeBackend)
    c = RealCloud(app=app, transport=Recording(transport), token=token, fake=fake)
    try:
        yield c
    finally:
        for client in c.clients:
            client.close()
        transport.stop()


@pytest.fixture
def client(cloud: RealCloud) -> Client:
    return cloud.client(cloud.token)
