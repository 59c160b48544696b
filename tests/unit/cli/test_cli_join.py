"""``neocloud node join --head``: the head's port comes from ``--ray-address HOST:PORT``
(6379 without it), and a port already taken is refused before Ray starts.

The bug: ``--head`` always started the head on 6379, so on a server where that port was
taken (a redis, say) ``ray start`` failed with "Failed to start the grpc server".
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from neocloud.cli import join as join_mod
from neocloud.cli.main import app
from neocloud.cli.params import host_port
from neocloud.server.backends import discovery

URL = "http://127.0.0.1:1"


class FakeClient:
    """The control plane as ``node join`` sees it: an operator token, no shared folder."""

    joined: list[Any] = []

    def __init__(self, url: str, token: str) -> None:
        self.nodes = SimpleNamespace(join_check=lambda: SimpleNamespace(path=None, token=None),
                                     join=self._join)

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def whoami(self) -> Any:
        return SimpleNamespace(workspace=SimpleNamespace(operator=True, name="ops"),
                               token=SimpleNamespace(role=SimpleNamespace(value="admin")))

    def _join(self, spec: Any) -> Any:
        FakeClient.joined.append(spec)
        return spec


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Ray importable (a stand-in), and no real Ray node or control plane: what would
    have been started and asked is recorded."""
    seen: dict[str, list[Any]] = {"start": [], "gcs": [], "client": []}
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setitem(sys.modules, "ray", ModuleType("ray"))

    def client(url: str, token: str) -> FakeClient:
        seen["client"].append(url)
        return FakeClient(url, token)

    monkeypatch.setattr("neocloud.sdk.client.Client", client)
    monkeypatch.setattr(discovery, "discover_machine", lambda **kw: SimpleNamespace(
        cpu_milli=2000, memory_mib=4096, gpus=[]))
    monkeypatch.setattr(join_mod, "_start_ray",
                        lambda cmd, block: seen["start"].append(cmd))
    monkeypatch.setattr(join_mod, "ray_node_id",
                        lambda gcs, ip, name, proc: seen["gcs"].append(gcs) or "ab" * 8)
    monkeypatch.setattr(join_mod, "_print", lambda node, spec, json_out: None)
    return seen


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something listens on, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(*args: str) -> Result:
    return CliRunner().invoke(app, ["node", "join", URL, "--token", "t", "--name", "cp",
                                    *args], catch_exceptions=False)


def test_head_listens_on_the_port_of_ray_address(calls: dict[str, list[Any]]) -> None:
    port = _free_port()
    result = _join("--head", "--ray-address", f"127.0.0.1:{port}")
    assert result.exit_code == 0, result.output
    [cmd] = calls["start"]
    assert "--head" in cmd and f"--port={port}" in cmd
    assert "--node-ip-address=127.0.0.1" in cmd
    assert not any(a.startswith("--address") for a in cmd)
    assert calls["gcs"] == [f"127.0.0.1:{port}"]


def test_head_without_ray_address_uses_6379(calls: dict[str, list[Any]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[tuple[str, int]] = []
    monkeypatch.setattr(join_mod, "check_port_free", lambda a, p: checked.append((a, p)))
    result = _join("--head", "--node-ip", "127.0.0.1")
    assert result.exit_code == 0, result.output
    assert checked == [("127.0.0.1", 6379)]
    assert "--port=6379" in calls["start"][0]
    assert calls["gcs"] == ["127.0.0.1:6379"]


def test_taken_port_is_refused_before_anything_starts(calls: dict[str, list[Any]],
                                                      taken: int) -> None:
    result = _join("--head", "--ray-address", f"127.0.0.1:{taken}")
    assert result.exit_code == 1
    assert f"port {taken} is already in use on 127.0.0.1" in result.stderr
    assert "--ray-address 127.0.0.1:PORT" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert calls == {"start": [], "gcs": [], "client": []}


def test_taken_default_port_is_refused(calls: dict[str, list[Any]], taken: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(join_mod, "DEFAULT_HEAD_PORT", taken)
    result = _join("--head", "--node-ip", "127.0.0.1")
    assert result.exit_code == 1 and f"port {taken} is already in use" in result.stderr
    assert calls["start"] == []


def test_port_taken_on_another_address_is_refused(calls: dict[str, list[Any]],
                                                  taken: int) -> None:
    # Ray's GCS listens on every address: a port held on 127.0.0.1 blocks a head elsewhere
    result = _join("--head", "--ray-address", f"127.0.0.2:{taken}")
    assert result.exit_code == 1 and f"port {taken} is already in use" in result.stderr
    assert calls["start"] == []


@pytest.mark.parametrize("args, hint", [
    (("--ray-address", "127.0.0.1"), "'--ray-address'"),
    (("--ray-address", "127.0.0.1:0"), "'--ray-address'"),
    (("--ray-address", "127.0.0.1:70000"), "'--ray-address'"),
    (("--ray-address", "127.0.0.1:6380", "--node-ip", "127.0.0.2"), "'--node-ip'"),
    (("--node-ip", "127.0.0.1", "--ray-arg=--port=6380"), "'--ray-arg'"),
])
def test_bad_head_address_is_a_usage_error(calls: dict[str, list[Any]],
                                           args: tuple[str, ...], hint: str) -> None:
    result = _join("--head", *args)
    assert result.exit_code == 2 and hint in result.stderr
    assert calls["start"] == []


def test_worker_joins_at_ray_address_unchanged(calls: dict[str, list[Any]]) -> None:
    result = _join("--ray-address", "127.0.0.1:6380", "--node-ip", "127.0.0.1")
    assert result.exit_code == 0, result.output
    [cmd] = calls["start"]
    assert "--address=127.0.0.1:6380" in cmd and "--head" not in cmd
    assert not any(a.startswith("--port") for a in cmd)
    assert calls["gcs"] == ["127.0.0.1:6380"]


def test_help_says_how_to_pick_the_head_port() -> None:
    text = " ".join(CliRunner().invoke(app, ["node", "join", "--help"],
                                       env={"COLUMNS": "200"}).output.split())
    assert "omit with --head" not in text
    assert "default 6379" in text


def test_head_address_not_of_this_machine_is_refused(calls: dict[str, list[Any]]) -> None:
    result = _join("--head", "--ray-address", "192.0.2.1:6380")  # TEST-NET-1: not here
    assert result.exit_code == 1
    assert "cannot start the Ray head at 192.0.2.1:6380" in result.stderr
    assert "Traceback" not in result.stderr and calls["start"] == []


@pytest.mark.parametrize(("value", "parsed"), [
    ("10.0.0.1:6380", ("10.0.0.1", 6380)), ("::1:6379", ("::1", 6379)),
    ("10.0.0.1", None), (":6379", None), ("h:0", None), ("h:65536", None), ("h:x", None),
])
def test_host_port_reads_the_last_colon_and_a_tcp_port(value, parsed) -> None:
    assert host_port(value) == parsed
