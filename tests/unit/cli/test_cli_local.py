from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import Result

Run = Callable[..., Result]


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **functions: Any) -> None:
    module = ModuleType(name)
    for attr, fn in functions.items():
        setattr(module, attr, fn)
    monkeypatch.setitem(sys.modules, name, module)


def test_up_and_server_delegate_to_launch(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[str, tuple[Any, ...]]] = []
    monkeypatch.setitem(sys.modules, "ray", ModuleType("ray"))  # installed or not
    _fake_module(
        monkeypatch, "neocloud.server.launch",
        up=lambda *a, **kw: calls.append(("up", a, kw)),
        serve=lambda *a: calls.append(("serve", a, {})),
    )
    assert run("up", login=False).exit_code == 0
    assert run("up", "--host", "0.0.0.0", "--port", "9001", "--home", str(tmp_path),
               "--backend", "ray", login=False).exit_code == 0
    assert run("up", "--backend", "ray", "--ray-address", "127.0.0.2:6379",
               login=False).exit_code == 0
    assert run("server", "--port", "9002", login=False).exit_code == 0
    assert calls == [
        ("up", (None, None, None, None), {"ray_address": None}),
        ("up", ("0.0.0.0", 9001, tmp_path, "ray"), {"ray_address": None}),
        ("up", (None, None, None, "ray"), {"ray_address": "127.0.0.2:6379"}),
        ("serve", (None, 9002), {}),
    ]
    assert run("up", "--ray-address", "127.0.0.2:6379", login=False).exit_code == 2
    assert run("up", "--backend", "ray", "--ray-address", "nohost", login=False).exit_code == 2
    bad = run("up", "--backend", "k8s", login=False)
    assert bad.exit_code == 2 and "'--backend'" in bad.stderr
    assert run("up", "--port", "70000", login=False).exit_code == 2


def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray not installed: its import fails (and so does the ray backend's module)."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "neocloud.server.backends.ray_backend", None)


@pytest.mark.parametrize("args, env", [
    (("--backend", "ray"), {}),
    ((), {"NEOCLOUD_BACKEND": "ray"}),
])
def test_up_ray_without_ray_fails_before_creating_anything(
    run: Run, monkeypatch: pytest.MonkeyPatch, isolated_home: Path,
    args: tuple[str, ...], env: dict[str, str],
) -> None:
    # The bug: it said "neocloud is up", printed an admin token and wrote config.json and
    # the database before it failed for want of Ray.
    import socket

    _no_ray(monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    result = run("up", "--port", port, *args, login=False)
    assert result.exit_code == 1
    assert "the ray backend needs Ray" in result.stderr
    assert "pip install 'neocloud[ray]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "neocloud is up" not in result.output + result.stderr
    assert "token" not in (result.output + result.stderr).lower()
    assert not isolated_home.exists()


def test_up_ray_checks_neocloud_ray_address_first(
    run: Run, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    calls: list[Any] = []
    monkeypatch.setitem(sys.modules, "ray", ModuleType("ray"))
    _fake_module(monkeypatch, "neocloud.server.launch", up=lambda *a, **kw: calls.append(a))
    monkeypatch.setenv("NEOCLOUD_RAY_ADDRESS", "nohost")
    result = run("up", "--backend", "ray", login=False)
    assert result.exit_code == 2 and "NEOCLOUD_RAY_ADDRESS" in result.stderr
    assert calls == []
    monkeypatch.setenv("NEOCLOUD_RAY_ADDRESS", "127.0.0.2:6380")
    assert run("up", "--backend", "ray", login=False).exit_code == 0
    assert len(calls) == 1


def test_up_local_does_not_need_ray(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    _no_ray(monkeypatch)
    _fake_module(monkeypatch, "neocloud.server.launch", up=lambda *a, **kw: calls.append(a))
    assert run("up", login=False).exit_code == 0
    assert run("up", "--backend", "local", login=False).exit_code == 0
    assert len(calls) == 2


def test_serve_delegates_to_runner(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    _fake_module(monkeypatch, "neocloud.serving.runner",
                 run=lambda *a, **kw: calls.append((a, kw)))
    result = run("serve", "embeddings", "--port", "8123", "--name", "minilm", "--workers", "2",
                 login=False)
    assert result.exit_code == 0, result.stderr
    assert calls == [(("embeddings",), {"host": "127.0.0.1", "port": 8123, "name": "minilm",
                                         "model": None, "workers": 2, "reload": False})]


def test_missing_runtime_is_a_clear_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "neocloud.serving.runner", None)
    result = run("serve", "embeddings", login=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: `neocloud serve` needs the module")
    assert "Traceback" not in result.stderr


def test_errors_from_delegates_are_messages(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from neocloud.errors import Conflict

    def up(*args: Any, **kwargs: Any) -> None:
        raise Conflict("port 8000 is in use")

    _fake_module(monkeypatch, "neocloud.server.launch", up=up)
    result = run("up", login=False)
    assert result.exit_code == 1 and result.stderr.strip() == "Error: port 8000 is in use"


def test_simulate(run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nodes, pods = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    nodes.write_text("name\n")
    pods.write_text("name\n")
    calls: list[tuple[Any, ...]] = []

    def simulate_fgd_protocol(nodes_csv: Path, pods_csv: Path, *, policy: str,
                              seed: int) -> dict[str, Any]:
        if policy == "nope":
            raise ValueError("unknown policy 'nope'")
        calls.append((nodes_csv, pods_csv, policy, seed))
        return {"policy": policy, "unallocated_gpu_pct": 12.3456789, "curve": [1, 2]}

    _fake_module(monkeypatch, "neocloud.simulate", simulate_fgd_protocol=simulate_fgd_protocol)
    args = ("simulate", "--nodes", str(nodes), "--pods", str(pods), "--policy", "fgd",
            "--seed", "7")
    table = run(*args, login=False)
    assert table.exit_code == 0, table.stderr
    assert calls == [(nodes, pods, "fgd", 7)]
    assert "unallocated_gpu_pct  12.3457" in table.stdout and "[1, 2]" in table.stdout
    data = json.loads(run(*args, "--json", login=False).stdout)
    assert data["unallocated_gpu_pct"] == 12.3456789
    unknown = run(*args[:6], "nope", login=False)
    # An unknown policy is a usage error naming the known ones, before any replay.
    assert unknown.exit_code == 2 and "unknown policy 'nope'" in unknown.stderr
    assert "fgd" in unknown.stderr and len(calls) == 2
    missing = run("simulate", "--nodes", str(tmp_path / "none.csv"), "--pods", str(pods),
                  "--policy", "fgd", login=False)
    assert missing.exit_code == 2 and "'--nodes'" in missing.stderr
