"""Fixtures of the adversarial regression tests: an in-process cloud on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import Cloud, open_cloud


@pytest.fixture
def cloud(tmp_path: Path, sqlite_url: str) -> Iterator[Cloud]:
    c, client = open_cloud(tmp_path / "home", sqlite_url)
    try:
        yield c
    finally:
        client.__exit__(None, None, None)
