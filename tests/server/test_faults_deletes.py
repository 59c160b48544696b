"""Concurrent DELETEs of one object, through a real server and concurrent clients.

Found: four DELETEs at once of one secret, volume, deployment or token often answered
204 to two to four of them, wrote as many audit "success" entries, and the server
logged ``SAWarning: DELETE ... expected to delete 1 row(s); 0 were matched``: each
delete read the row, then deleted it without confirming that a row went. Exactly one
must answer 204, the others 404, with one audit "success" and one ``Deleted`` event
(``services/removal.py``).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from neocloud.errors import NotFound
from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend
from neocloud.server.bootstrap import bootstrap
from neocloud.server.crypto import SecretBox
from neocloud.server.db.engine import Database
from neocloud.server.db.tables import Event, Job, Secret, Workspace
from neocloud.server.services import secrets as secret_svc
from tests.server.helpers import make_settings, race_in_order

CALLERS = 4
ROUNDS = 4


class Api:
    """A live control plane on a real port, called by plain HTTP clients."""

    def __init__(self, tmp_path: Path, db_url: str, live_server_factory: Any):
        self.app = create_app(make_settings(tmp_path / "home", db_url),
                              backends={"fake": FakeBackend()}, run_reconcilers=False)
        self.url = live_server_factory(self.app).url + "/api/v1"
        self.headers = {"Authorization": f"Bearer {bootstrap(self.app.state.db).token}"}

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with httpx.Client(timeout=60) as c:
            return c.request(method, self.url + path, headers=self.headers, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        r = self.call(method, path, **kw)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def race(self, path: str) -> Counter[int]:
        """The statuses of :data:`CALLERS` DELETEs of ``path`` sent at the same moment."""
        start = threading.Barrier(CALLERS)

        def one(_: int) -> int:
            with httpx.Client(timeout=60) as c:
                start.wait(30)
                return c.delete(self.url + path, headers=self.headers).status_code

        with cf.ThreadPoolExecutor(CALLERS) as ex:
            return Counter(ex.map(one, range(CALLERS)))

    def successes(self, target: str) -> int:
        """Audit "success" entries of DELETEs of ``target`` (a path under ``/api/v1``)."""
        entries = self.ok("GET", "/audit", params={"limit": 1000})["data"]
        return sum(1 for e in entries if e["method"] == "DELETE" and e["target"] == target
                   and e["outcome"] == "success")


def _make_secret(api: Api, name: str) -> str:
    api.ok("PUT", f"/secrets/{name}", json={"value": "v"})
    return f"/secrets/{name}"


def _make_volume(api: Api, name: str) -> str:
    api.ok("POST", "/volumes", json={"name": name})
    return f"/volumes/{name}"


def _make_deployment(api: Api, name: str) -> str:
    api.ok("POST", "/deployments", json={"name": name, "service": "embeddings",
                                         "shape": "cpu.small", "replicas": 0})
    return f"/deployments/{name}"


def _make_token(api: Api, name: str) -> str:
    api.ok("POST", "/tokens", json={"name": name, "role": "member"})
    return f"/tokens/{name}"


def _make_team_token(api: Api, name: str) -> str:
    made = api.call("POST", "/workspaces", json={"name": "team"})  # in the first round
    assert made.status_code in (201, 409), made.text
    api.ok("POST", "/workspaces/team/tokens", json={"name": name, "role": "member"})
    return f"/workspaces/team/tokens/{name}"


def _make_node(api: Api, name: str) -> str:
    api.ok("POST", "/nodes", json={"name": name, "cpu_milli": 4000, "memory_mib": 8192,
                                   "gpus": [], "backend": "fake"})
    return f"/nodes/{name}"


def _make_job(api: Api, name: str) -> str:
    """A finished job (only those may be deleted)."""
    api.ok("POST", "/jobs", json={"name": name, "command": ["true"], "shape": "cpu.small"})
    with api.app.state.db.session() as s:
        s.execute(update(Job).where(Job.name == name).values(status="succeeded"))
    return f"/jobs/{name}"


def _make_budget(api: Api, _name: str) -> str:
    api.ok("PUT", "/budget", json={"monthly_micros": 1_000_000})
    return "/budget"


MAKERS: dict[str, Callable[[Api, str], str]] = {
    "secret": _make_secret, "volume": _make_volume, "deployment": _make_deployment,
    "token": _make_token, "workspace_token": _make_team_token, "node": _make_node,
    "job": _make_job, "budget": _make_budget,
}


#: Kinds read back at their path once deleted (a deployment stays, ``deleting``, until its
#: reconciler has stopped its replicas; tokens are not read one by one).
READABLE = {"secret", "volume", "node", "job", "budget"}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_concurrent_deletes_of_one_object_succeed_once(
        kind: str, tmp_path: Path, db_url: str, live_server_factory: Any) -> None:
    api = Api(tmp_path, db_url, live_server_factory)
    for n in range(ROUNDS):  # the race is narrow: a few rounds make it reliable
        path = MAKERS[kind](api, f"gone-{n}")
        before = api.successes(path.removeprefix("/"))
        seen = api.race(path)
        assert seen == Counter({204: 1, 404: CALLERS - 1}), (path, seen)
        assert api.successes(path.removeprefix("/")) == before + 1, path
        if kind in READABLE:
            assert api.call("GET", path).status_code == 404, path


def test_a_delete_that_waited_for_another_finds_nothing(db_url: str) -> None:
    """The interleaving of the race, forced: the first delete has removed the secret but
    not committed when the second reads it; the second then waits for the first's lock
    and must raise ``NotFound`` without writing anything (before, its ``DELETE`` matched
    no row and it committed a second ``Deleted`` event)."""
    db = Database(db_url)
    box = SecretBox(bytes(range(32)))
    try:
        with db.session() as s:
            ws = Workspace(name="w")
            s.add(ws)
            s.flush()
            ws_id = ws.id
            secret_svc.set_secret(s, workspace_id=ws_id, name="k", value="v", box=box)
        def delete(s: Any) -> None:
            secret_svc.delete_secret(s, workspace_id=ws_id, name="k")

        first, second = race_in_order(db, delete, delete)
        assert first is None and isinstance(second, NotFound), (first, second)
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Secret)) == 0
            deleted = s.scalar(select(func.count()).select_from(Event).where(
                Event.kind == "secret", Event.reason == "Deleted"))
            assert deleted == 1
    finally:
        db.dispose()
