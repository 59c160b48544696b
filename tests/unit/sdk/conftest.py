from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The fake control plane lives beside this file; the CLI tests import it too.
sys.path.insert(0, str(Path(__file__).parent))

from fakecloud import ADMIN_TOKEN, BASE, FakeCloud  # noqa: E402

from neocloud.sdk import Client  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own NEOCLOUD_HOME and no connection settings from outside."""
    home = tmp_path / "home"
    monkeypatch.setenv("NEOCLOUD_HOME", str(home))
    monkeypatch.delenv("NEOCLOUD_URL", raising=False)
    monkeypatch.delenv("NEOCLOUD_TOKEN", raising=False)
    return home


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


@pytest.fixture
def client(cloud: FakeCloud) -> Iterator[Client]:
    with Client(BASE, ADMIN_TOKEN, transport=cloud.transport) as c:
        yield c
