"""Deployments of engine ``vllm``: the missing engine environment is a 400 naming its install
step (nothing stored), ``engine`` and ``service`` go together or are refused naming the
field, the field survives a round trip and a PATCH, and the reconciler builds the vLLM
launcher command (cuda with GPUs, else cpu with a KV cache of half the shape's memory)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from neocloud.cli.context import CliState
from neocloud.cli.main import app as cli_app
from neocloud.server.reconcilers.deployments import kv_cache_gib
from tests.server.helpers import Cloud

H100 = [{"type": "H100", "count": 1, "memory_mib": 81559}]
LAUNCHER = "neocloud.serving.engines.vllm"


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The engine environment setting points at a folder that does not exist."""
    missing = tmp_path / "no-such-venv"
    monkeypatch.delenv("NEOCLOUD_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("NEOCLOUD_VLLM_VENV", str(missing))
    return missing


@pytest.fixture
def vllm_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment laid out as ``make install-vllm`` leaves one (an interpreter and a
    ``vllm`` package folder): enough for the control plane's check; no replica of it runs
    here (the fake backend starts none)."""
    root = tmp_path / "venv-vllm"
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "python3.12" / "site-packages" / "vllm").mkdir(parents=True)
    os.symlink(sys.executable, root / "bin" / "python")
    monkeypatch.delenv("NEOCLOUD_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("NEOCLOUD_VLLM_VENV", str(root))
    return root


def _error(r) -> dict:  # noqa: ANN001
    return r.json()["error"]


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_missing_engine_is_a_400_naming_the_install_step(cloud: Cloud, no_vllm: Path) -> None:
    r = cloud.api("POST", "/deployments", json={"name": "v", "engine": "vllm"})
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["code"] == "engine_not_installed" and err["param"] == "engine"
    assert "make install-vllm" in err["message"] and str(no_vllm) in err["message"]
    assert cloud.api("GET", "/deployments/v").status_code == 404  # nothing stored
    r = cloud.api("POST", "/deployments?dry_run=true", json={"name": "v", "engine": "vllm"})
    assert r.status_code == 400 and _error(r)["code"] == "engine_not_installed"


def test_engine_and_service_conflicts_name_the_field(cloud: Cloud, vllm_env: Path) -> None:
    r = cloud.api("POST", "/deployments", json={"name": "v", "engine": "vllm",
                                                "service": "chat"})
    assert r.status_code == 400 and _error(r)["param"] == "service", r.text
    r = cloud.api("POST", "/deployments", json={"name": "b"})
    assert r.status_code == 400 and _error(r)["param"] == "service", r.text
    r = cloud.api("POST", "/deployments", json={"name": "b", "engine": "tensorrt",
                                                "service": "chat"})
    assert r.status_code == 422 and _error(r)["param"] == "engine", r.text  # schema check
    assert cloud.api("GET", "/deployments").json()["data"] == []


def test_engine_field_round_trip(cloud: Cloud, vllm_env: Path) -> None:
    r = cloud.api("POST", "/deployments", json={"name": "v", "engine": "vllm",
                                                "model": "hf:HuggingFaceTB/SmolLM2-135M"})
    assert r.status_code == 201, r.text
    got = cloud.api("GET", "/deployments/v").json()
    assert (got["engine"], got["service"], got["model"]) == (
        "vllm", None, "hf:HuggingFaceTB/SmolLM2-135M")
    r = cloud.api("POST", "/deployments", json={"name": "b", "service": "chat"})
    assert r.json()["engine"] == "builtin" and r.json()["service"] == "chat"
    revs = cloud.api("GET", "/deployments/v/revisions").json()["data"]
    assert revs[-1]["spec"]["engine"] == "vllm"
    events = cloud.api("GET", "/deployments/v/events").json()["data"]
    assert any("engine vllm" in e["message"] for e in events)


def test_patch_moves_between_engines(cloud: Cloud, vllm_env: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.api("POST", "/deployments", json={"name": "d", "service": "chat"})
    r = cloud.api("PATCH", "/deployments/d", json={"engine": "vllm"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["engine"], d["service"], d["generation"]) == ("vllm", None, 2)
    r = cloud.api("PATCH", "/deployments/d", json={"service": "embeddings"})
    assert r.status_code == 400 and _error(r)["param"] == "service", r.text
    r = cloud.api("PATCH", "/deployments/d", json={"engine": "builtin"})
    assert r.status_code == 400 and _error(r)["param"] == "service", r.text
    r = cloud.api("PATCH", "/deployments/d", json={"engine": "builtin", "service": "chat"})
    assert r.status_code == 200, r.text
    assert (r.json()["engine"], r.json()["service"], r.json()["generation"]) == (
        "builtin", "chat", 3)
    # without the environment a move to vllm is refused and nothing changes
    monkeypatch.setenv("NEOCLOUD_VLLM_VENV", str(vllm_env.parent / "gone"))
    r = cloud.api("PATCH", "/deployments/d", json={"engine": "vllm"})
    assert r.status_code == 400 and _error(r)["code"] == "engine_not_installed"
    d = cloud.api("GET", "/deployments/d").json()
    assert (d["engine"], d["generation"], d["revision"]) == ("builtin", 3, 3)


def test_command_on_cpu_and_on_gpu(cloud: Cloud, vllm_env: Path) -> None:
    cloud.add_fake_node("n1", gpus=H100)
    cloud.api("POST", "/deployments", json={"name": "cpu-v", "engine": "vllm"})
    cloud.api("POST", "/deployments", json={"name": "gpu-v", "engine": "vllm",
                                            "shape": "gpu.h100", "model": "/models/x"})
    cloud.reconcile(2)
    started = {s.env["NEOCLOUD_SERVED_MODEL_NAME"]: s for s in cloud.fake.started}
    for name, device, gib in (("cpu-v", "cpu", "1"), ("gpu-v", "cuda", "64")):
        spec = started[name]
        cmd = spec.command
        rep = cloud.api("GET", f"/deployments/{name}").json()["replica_list"][0]
        assert cmd[1:3] == ["-m", LAUNCHER], cmd
        assert _arg(cmd, "--port") == str(rep["port"]) == str(spec.port)
        assert _arg(cmd, "--host") == "127.0.0.1" and _arg(cmd, "--name") == name
        assert _arg(cmd, "--device") == device and _arg(cmd, "--kv-cache-gib") == gib
    assert "--model" not in started["cpu-v"].command  # the launcher's default model
    assert _arg(started["gpu-v"].command, "--model") == "/models/x"
    assert started["gpu-v"].gpu_indices == (0,)


def test_builtin_command_is_unchanged(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    cloud.api("POST", "/deployments", json={"name": "c", "service": "chat", "model": "m"})
    cloud.reconcile(2)
    cmd = cloud.fake.started[-1].command
    assert cmd[1:4] == ["-m", "neocloud.serving", "chat"] and _arg(cmd, "--model") == "m"


def test_kv_cache_is_half_the_memory_at_least_one_gib() -> None:
    assert kv_cache_gib(None) == 1 and kv_cache_gib(512) == 1 and kv_cache_gib(2048) == 1
    assert kv_cache_gib(8192) == 4 and kv_cache_gib(131072) == 64 and kv_cache_gib(5000) == 2


def test_vllm_replicas_get_the_longer_ready_timeout(cloud: Cloud) -> None:
    rec = cloud.app.state.reconcilers.deployments
    assert rec.ready_timeout_s("vllm") == rec.settings.vllm_ready_timeout_s
    assert rec.ready_timeout_s("builtin") == rec.settings.replica_ready_timeout_s
    assert rec.settings.vllm_ready_timeout_s > rec.settings.replica_ready_timeout_s


def _cli(cloud: Cloud) -> Any:
    runner = CliRunner()

    class InProcess(httpx.BaseTransport):
        """The CLI's requests, sent to the real app in this process."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            got = cloud.client.request(request.method, str(request.url),
                                       headers=request.headers, content=request.read())
            return httpx.Response(got.status_code, headers=got.headers, content=got.content)

    def cli(*args: str) -> Any:
        state = CliState(transport=InProcess())
        state.url, state.token = "http://testserver", cloud.token
        return runner.invoke(cli_app, list(args), obj=state, catch_exceptions=False)

    return cli


def test_cli_deploy_engine_vllm(cloud: Cloud, vllm_env: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    cli = _cli(cloud)
    res = cli("deploy", "v", "--engine", "vllm", "--model", "hf:ORG/NAME", "--no-wait",
              "--json")
    assert res.exit_code == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert (out["engine"], out["service"], out["model"]) == ("vllm", None, "hf:ORG/NAME")
    res = cli("status", "v")
    assert res.exit_code == 0 and "vllm" in res.stdout, res.stdout
    res = cli("deploy", "w", "--engine", "vllm", "--service", "chat", "--no-wait")
    assert res.exit_code != 0 and "service" in res.stderr and "Traceback" not in res.stderr
    res = cli("deploy", "w", "--no-wait")
    assert res.exit_code == 2 and "--service" in res.stderr
    monkeypatch.setenv("NEOCLOUD_VLLM_VENV", str(vllm_env.parent / "gone"))
    res = cli("deploy", "w", "--engine", "vllm", "--no-wait")
    assert res.exit_code != 0 and "make install-vllm" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_status_ls_and_created_event_name_the_same_engine_and_model(
        cloud: Cloud, vllm_env: Path) -> None:
    """``deploy chat-vllm --engine vllm --model PATH``: ``ls`` showed SERVICE ``vllm`` where
    ``status`` showed ``service -``; without ``--model``, ``status`` and ``ls`` showed
    ``model -`` where the Created event said ``model default``."""
    path = "/models/chat"
    cli = _cli(cloud)
    for name, model in (("chat-vllm", ["--model", path]), ("plain-vllm", [])):
        res = cli("deploy", name, "--engine", "vllm", *model, "--no-wait")
        assert res.exit_code == 0, res.stdout + res.stderr
    want = {"chat-vllm": path, "plain-vllm": "default"}
    listed = cli("ls").stdout.splitlines()
    assert listed[0].split()[:4] == ["NAME", "ENGINE", "SERVICE", "MODEL"]
    rows = {line.split()[0]: line.split()[1:4] for line in listed[1:]}
    for name, model in want.items():
        assert rows[name] == ["vllm", "-", model], listed
        detail = {line.split()[0]: line.split()[1:] for line in
                  cli("status", name).stdout.splitlines() if line.strip()}
        assert (detail["engine"], detail["service"], detail["model"]) == (
            ["vllm"], ["-"], [model])
        created = [e["message"] for e in
                   cloud.api("GET", f"/deployments/{name}/events").json()["data"]
                   if e["reason"] == "Created"]
        assert created == [f"deployment {name} created: 1 x cpu.small, engine vllm, "
                           f"model {model}"]
    assert cloud.api("GET", "/deployments/chat-vllm").json()["model"] == path
    assert cloud.api("GET", "/deployments/plain-vllm").json()["model"] is None
