"""Every mutating route commits before it answers: a client that uses what it just created
or changed, at once and on the same keep-alive connection, always finds it.

Reproducer (before the fix): ``POST /api/v1/volumes`` then, on the same connection,
``PUT /api/v1/volumes/NAME/files/a.txt`` answered 404 in about 9 tries of 20, because the
route's session committed only after the response had been sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from neocloud.podrun import find_sshd
from neocloud.server.app import create_app
from neocloud.server.backends import FakeBackend, LocalBackend
from neocloud.server.bootstrap import bootstrap
from tests.server.helpers import make_settings

TRIES = 12


class Api:
    """One keep-alive connection to a live control plane, as one token."""

    def __init__(self, client: httpx.Client, token: str):
        self.client = client
        self.token = token

    def __call__(self, method: str, path: str, token: str | None = None,
                 **kw: Any) -> httpx.Response:
        h = {"Authorization": f"Bearer {token or self.token}"}
        return self.client.request(method, f"/api/v1{path}", headers=h, **kw)

    def ok(self, method: str, path: str, status: int = 200, token: str | None = None,
           **kw: Any) -> Any:
        r = self(method, path, token, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        return r.json() if r.content else None


@pytest.fixture
def api(tmp_path: Path, db_url: str,
        live_server_factory: Callable[[object], Any]) -> Iterator[Api]:
    settings = make_settings(tmp_path / "home", db_url)
    # No reconciler thread: what a route answered is then only what it committed (a
    # reconciler acting in between is the concern of the concurrency tests).
    app = create_app(settings, backends={"fake": FakeBackend(), "local": LocalBackend()},
                     run_reconcilers=False)
    srv = live_server_factory(app)
    token = bootstrap(app.state.db).token
    assert token
    # One connection for the whole test: every request reuses it (keep-alive).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=srv.url, limits=limits, timeout=30) as client:
        a = Api(client, token)
        a.ok("POST", "/nodes", 201, json={"name": "n1", "cpu_milli": 256000,
                                          "memory_mib": 1_048_576, "backend": "fake"})
        yield a


def test_volume_and_its_files_are_usable_at_once(api: Api) -> None:
    for i in range(TRIES):
        name = f"vol-{i}"
        api.ok("POST", "/volumes", 201, json={"name": name})
        api.ok("PUT", f"/volumes/{name}/files/a.txt", 201, content=b"hello")
        assert api.client.get(f"/api/v1/volumes/{name}/files/a.txt",
                              headers={"Authorization": f"Bearer {api.token}"}).content == b"hello"
        api.ok("DELETE", f"/volumes/{name}/files/a.txt", 204)
        assert api("GET", f"/volumes/{name}/files/a.txt").status_code == 404
        api.ok("DELETE", f"/volumes/{name}", 204)
        assert api("GET", f"/volumes/{name}").status_code == 404
        api.ok("POST", "/volumes", 201, json={"name": name})  # the name is free again


def test_secrets_are_usable_at_once(api: Api) -> None:
    for i in range(TRIES):
        name = f"key-{i}"
        api.ok("PUT", f"/secrets/{name}", 201, json={"value": "v1"})
        api.ok("GET", f"/secrets/{name}")
        api.ok("PUT", f"/secrets/{name}", 200, json={"value": "v2"})
        api.ok("DELETE", f"/secrets/{name}", 204)
        assert api("GET", f"/secrets/{name}").status_code == 404


def test_workspaces_tokens_and_quotas_are_usable_at_once(api: Api) -> None:
    for i in range(TRIES):
        ws = f"team-{i}"
        api.ok("POST", "/workspaces", 201, json={"name": ws})
        tok = api.ok("POST", f"/workspaces/{ws}/tokens", 201,
                     json={"name": "admin", "role": "admin"})["token"]
        assert api.ok("GET", "/whoami", token=tok)["workspace"]["name"] == ws
        q = api.ok("PUT", f"/workspaces/{ws}/quota", json={"gpus_total": i})
        assert q["gpus_total"] == i
        assert api.ok("GET", "/quota", token=tok)["gpus_total"] == i
        own = api.ok("POST", "/tokens", 201, token=tok, json={"name": "ci", "role": "viewer"})
        assert api.ok("GET", "/whoami", token=own["token"])["token"]["name"] == "ci"
        api.ok("DELETE", "/tokens/ci", 204, token=tok)
        assert api("GET", "/whoami", token=own["token"]).status_code == 401


def test_nodes_and_shapes_are_usable_at_once(api: Api) -> None:
    for i in range(TRIES):
        node = f"node-{i}"
        api.ok("POST", "/nodes", 201, json={"name": node, "cpu_milli": 1000,
                                            "memory_mib": 1024, "backend": "fake"})
        api.ok("GET", f"/nodes/{node}")
        assert api.ok("PATCH", f"/nodes/{node}", json={"status": "cordoned"})["status"] == \
            "cordoned"
        assert api.ok("GET", f"/nodes/{node}")["status"] == "cordoned"
        api.ok("DELETE", f"/nodes/{node}", 204)
        assert api("GET", f"/nodes/{node}").status_code == 404
        shape = f"cpu.t{i}"
        api.ok("POST", "/shapes", 201, json={"name": shape, "cpu_milli": 100,
                                             "memory_mib": 64, "price_per_hour_usd": 0.01})
        api.ok("GET", f"/shapes/{shape}")


def test_deployments_are_usable_at_once(api: Api) -> None:
    for i in range(TRIES):
        name = f"dep-{i}"
        api.ok("POST", "/deployments", 201,
               json={"name": name, "service": "embeddings", "replicas": 0})
        api.ok("GET", f"/deployments/{name}")
        api.ok("PATCH", f"/deployments/{name}", json={"replicas": 0, "env": {"I": str(i)}})
        assert api.ok("GET", f"/deployments/{name}")["env"] == {"I": str(i)}
        api.ok("DELETE", f"/deployments/{name}", 204)
        r = api("GET", f"/deployments/{name}")
        assert r.status_code == 404 or r.json()["status"] == "deleting", r.text


def test_jobs_are_usable_at_once(api: Api) -> None:
    for i in range(TRIES):
        name = f"job-{i}"
        api.ok("POST", "/jobs", 201, json={"name": name, "command": ["true"],
                                           "shape": "cpu.small"})
        api.ok("GET", f"/jobs/{name}")
        assert api.ok("POST", f"/jobs/{name}/stop")["status"] == "stopped"  # it was queued
        assert api.ok("GET", f"/jobs/{name}")["status"] == "stopped"
        api.ok("DELETE", f"/jobs/{name}", 204)
        assert api("GET", f"/jobs/{name}").status_code == 404


@pytest.mark.skipif(find_sshd() is None, reason="pods need the OpenSSH server (sshd)")
def test_pods_are_usable_at_once(api: Api) -> None:
    for i in range(TRIES):
        name = f"pod-{i}"
        api.ok("POST", "/pods", 201, json={"name": name})
        api.ok("GET", f"/pods/{name}")
        api.ok("GET", f"/volumes/{name}-home")  # created with the pod
        api.ok("POST", f"/pods/{name}/stop")
        api.ok("POST", f"/pods/{name}/start")
        api.ok("DELETE", f"/pods/{name}", 204)
        assert name not in {p["name"] for p in api.ok("GET", "/pods")["data"]}
