"""Parallel creates of one job (or deployment) name: one wins with 201, the others must get
409 ``already_exists``. Today some lose the race past the existence check and hit the
unique constraint: ``IntegrityError`` -> 500."""

from __future__ import annotations

import concurrent.futures as cf
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from tests.server.helpers import make_settings


@pytest.mark.parametrize("path,body", [
    ("/api/v1/jobs", {"command": ["true"]}),
    ("/api/v1/deployments", {"service": "x.y:Z", "replicas": 0}),
])
def test_parallel_creates_are_one_201_and_409s(tmp_path: Path, sqlite_url: str,
                                               live_server_factory: Any, path: str,
                                               body: dict) -> None:
    app = create_app(make_settings(tmp_path / "home", sqlite_url),
                     backends={"fake": FakeBackend()}, run_reconcilers=False)
    srv = live_server_factory(app)
    token = bootstrap(app.state.db).token
    headers = {"Authorization": f"Bearer {token}"}

    seen: Counter[int] = Counter()
    for n in range(6):  # the race is narrow: a few rounds (a new name each) make it reliable
        spec = {**body, "name": f"same{n}"}

        def create(_: int, spec: dict = spec) -> int:
            with httpx.Client(timeout=30) as c:
                return c.post(srv.url + path, json=spec, headers=headers).status_code

        with cf.ThreadPoolExecutor(12) as ex:
            seen.update(ex.map(create, range(12)))
    assert 500 not in seen, seen
