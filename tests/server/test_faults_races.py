"""Two calls racing over one name, through a real server and concurrent clients.

Found: ``PUT /secrets/{name}`` is create-or-replace, yet concurrent first sets of one
name answered 409 ``already_exists`` to all but one caller (the insert lost the race to
the unique constraint and the generic handler called it a name clash). Every caller must
succeed: one creates (201), the others replace (200), and the versions count each set.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from tests.server.helpers import make_settings

CALLERS = 10
ROUNDS = 5


def _server(tmp_path: Path, db_url: str, live_server_factory: Any) -> tuple[str, dict]:
    app = create_app(make_settings(tmp_path / "home", db_url),
                     backends={"fake": FakeBackend()}, run_reconcilers=False)
    srv = live_server_factory(app)
    token = bootstrap(app.state.db).token
    return srv.url, {"Authorization": f"Bearer {token}"}


def test_concurrent_first_sets_of_a_secret_all_succeed(tmp_path: Path, db_url: str,
                                                       live_server_factory: Any) -> None:
    url, headers = _server(tmp_path, db_url, live_server_factory)
    for n in range(ROUNDS):  # the race is narrow: a few names make it reliable
        name = f"race-{n}"

        def put(i: int, name: str = name) -> int:
            with httpx.Client(timeout=30) as c:
                return c.put(f"{url}/api/v1/secrets/{name}", json={"value": f"value-{i}"},
                             headers=headers).status_code

        with cf.ThreadPoolExecutor(CALLERS) as ex:
            seen = Counter(ex.map(put, range(CALLERS)))
        assert seen[201] == 1 and seen[200] == CALLERS - 1, (name, seen)
        with httpx.Client(timeout=30) as c:
            got = c.get(f"{url}/api/v1/secrets/{name}", headers=headers).json()
        assert got["version"] == CALLERS, got


def test_concurrent_pods_sharing_a_new_volume_all_start(tmp_path: Path, db_url: str,
                                                        live_server_factory: Any) -> None:
    """Pods ``p0..p9`` created at once, each with ``--volume shared`` (missing, so each
    create makes it): the losers of the volume's insert answered 409 "a resource of that
    name already exists" about pod names nobody had taken."""
    url, headers = _server(tmp_path, db_url, live_server_factory)
    for n in range(ROUNDS):
        volume = f"shared-{n}"

        def create(i: int, volume: str = volume, n: int = n) -> int:
            with httpx.Client(timeout=30) as c:
                return c.post(f"{url}/api/v1/pods", headers=headers, json={
                    "name": f"p{n}-{i}", "volume": volume}).status_code

        with cf.ThreadPoolExecutor(CALLERS) as ex:
            seen = Counter(ex.map(create, range(CALLERS)))
        assert seen == Counter({201: CALLERS}), (volume, seen)
        with httpx.Client(timeout=30) as c:
            vol = c.get(f"{url}/api/v1/volumes/{volume}", headers=headers).json()
        assert vol["name"] == volume
