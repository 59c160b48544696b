"""The pod shell under hostile input and a revoked token.

Found:

- ``/pods/{name}/shell?cols=70000`` opened a pseudo-terminal, then failed to size it
  (``struct.error``), leaking both of its descriptors and answering no error frame;
  repeated, it exhausts the control plane's file descriptors. Now 1008 with an error
  frame naming ``cols``, and a failed :class:`ShellSession` start closes what it opened;
- a ``resize`` frame with ``"cols": "wide"`` ended the shell with a server traceback;
- a token deleted while its shell was open kept the shell for as long as the connection
  lived (it was checked at the handshake only). Now the shell ends within
  ``SHELL_RECHECK_S`` with the authentication error, then the ``exit`` frame.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neocloud.podrun import find_sshd
from neocloud.server.podshell import ShellSession
from neocloud.server.routers import pods as pods_router
from tests.server.helpers import Cloud
from tests.server.workload_helpers import get, open_local_cloud, reconcile_workloads


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _first_frame(cloud: Cloud, path: str, token: str | None = None) -> dict[str, Any]:
    with cloud.client.websocket_connect(path, headers=cloud.h(token)) as ws:
        return dict(json.loads(ws.receive_text()))


def test_out_of_range_terminal_size_is_refused_naming_the_field(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    assert cloud.api("POST", "/pods", json={"name": "p"}).status_code == 201
    reconcile_workloads(cloud, 2)
    assert get(cloud, "/pods/p")["status"] == "running"
    before = _open_fds()
    for query, param in (("cols=70000", "cols"), ("rows=0", "rows"), ("cols=-5", "cols")):
        for _ in range(5):
            frame = _first_frame(cloud, f"/api/v1/pods/p/shell?{query}")
            assert frame["error"]["param"] == param, frame
            assert frame["error"]["type"] == "invalid_request_error", frame
    assert _open_fds() <= before + 2  # no descriptor per attempt


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_failed_shell_start_leaks_no_descriptor(tmp_path: Path) -> None:
    before = _open_fds()
    for _ in range(20):
        with pytest.raises(struct.error):
            ShellSession(home=tmp_path, host="127.0.0.1", port=1, user="nobody",
                         cols=70000, rows=24)
    assert _open_fds() == before


def test_resize_frame_without_numbers_is_ignored() -> None:
    assert pods_router._resize_of({"type": "resize", "cols": "wide"}) is None
    assert pods_router._resize_of({"type": "resize", "cols": 10**30, "rows": -3}) == (
        pods_router.MAX_TERMINAL, 1)
    assert pods_router._resize_of({"type": "resize", "cols": 100, "rows": 30}) == (100, 30)


@pytest.fixture
def local_cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from open_local_cloud(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(find_sshd() is None, reason="OpenSSH server (sshd) is not installed")
def test_revoked_token_ends_its_open_shell(local_cloud: Cloud,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cloud = local_cloud
    monkeypatch.setattr(pods_router, "SHELL_RECHECK_S", 0.2)
    admin = cloud.new_workspace("team", role="admin")
    r = cloud.api("POST", "/tokens", admin, json={"name": "shell", "role": "member"})
    assert r.status_code == 201, r.text
    member = r.json()["token"]
    assert cloud.api("POST", "/pods", member, json={"name": "dev"}).status_code == 201
    deadline = time.monotonic() + 60
    while get(cloud, "/pods/dev", member)["status"] != "running":
        assert time.monotonic() < deadline, get(cloud, "/pods/dev", member)
        reconcile_workloads(cloud)
        time.sleep(0.2)
    with cloud.client.websocket_connect("/api/v1/pods/dev/shell",
                                        headers=cloud.h(member)) as ws:
        assert json.loads(ws.receive_text()) == {"type": "ready"}
        assert cloud.api("DELETE", "/tokens/shell", admin).status_code == 204
        texts: list[dict[str, Any]] = []
        output = b""
        for _ in range(10_000):  # the shell stays idle: only the token check can end it
            msg = ws.receive()
            if msg.get("bytes"):
                output += msg["bytes"]
            elif msg.get("text"):
                texts.append(json.loads(msg["text"]))
                if texts[-1].get("type") == "exit":
                    break
            else:
                break
    try:
        assert texts and texts[-1]["type"] == "exit", texts
        assert any(t.get("error", {}).get("type") == "authentication_error"
                   for t in texts), texts
        assert b"shell closed" in output
    finally:  # the pod's process is the local backend's: stop it (it outlived the test)
        assert cloud.api("POST", "/pods/dev/stop", admin).status_code in (200, 202, 404)
        deadline = time.monotonic() + 30
        while get(cloud, "/pods/dev", admin)["status"] not in ("stopped", "failed"):
            assert time.monotonic() < deadline, get(cloud, "/pods/dev", admin)
            reconcile_workloads(cloud)
            time.sleep(0.2)
