from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from fakecloud import ADMIN_TOKEN, BASE, FakeCloud
from typer.testing import Result

from neocloud import __version__
from neocloud.config import save_config

Run = Callable[..., Result]


def _used_token(cloud: FakeCloud) -> str:
    return cloud.requests[-1].headers.get("authorization", "").removeprefix("Bearer ")


def test_config_precedence_args_env_file(run: Run, cloud: FakeCloud) -> None:
    cloud.add_token("env-token", "env", "admin", "default")
    cloud.add_token("arg-token", "arg", "admin", "default")
    save_config(BASE, ADMIN_TOKEN)
    assert run("ls", login=False).exit_code == 0
    assert _used_token(cloud) == ADMIN_TOKEN
    env = {"NEOCLOUD_TOKEN": "env-token"}
    assert run("ls", login=False, env=env).exit_code == 0
    assert _used_token(cloud) == "env-token"
    assert run("--token", "arg-token", "ls", login=False, env=env).exit_code == 0
    assert _used_token(cloud) == "arg-token"
    # The URL follows the same order: --url beats NEOCLOUD_URL beats the file.
    env_url = {"NEOCLOUD_URL": "http://env.test"}
    run("ls", login=False, env=env_url)
    assert cloud.requests[-1].url.host == "env.test"
    run("--url", "http://arg.test", "ls", login=False, env=env_url)
    assert cloud.requests[-1].url.host == "arg.test"


def test_no_token_anywhere(run: Run) -> None:
    result = run("ls", login=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: missing API token")
    assert "neocloud up" in result.stderr


def test_broken_config_file_is_reported(run: Run, isolated_home: Path) -> None:
    isolated_home.mkdir()
    (isolated_home / "config.json").write_text("{oops")
    result = run("ls", login=False)
    assert result.exit_code == 1
    assert "config.json is not valid JSON" in result.stderr


def test_unreachable_server(run: Run) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    from typer.testing import CliRunner

    from neocloud.cli.context import CliState
    from neocloud.cli.main import app

    result = CliRunner().invoke(app, ["--url", url, "--token", "t", "ls"], obj=CliState())
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot reach the neocloud control plane at {url}")
    assert "neocloud up" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["ls"], ["status"], ["token", "ls"], ["node", "ls"],
                                  ["shape", "ls"], ["workspace", "ls"], ["usage"]])
def test_json_listings_are_pure_json(run: Run, args: list[str]) -> None:
    run("deploy", "web", "-s", "embeddings", "--no-wait")
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)


def test_version_and_help(run: Run) -> None:
    assert run("--version").stdout.strip() == f"neocloud {__version__}"
    help_text = run("--help").stdout
    for command in ("up", "deploy", "ls", "status", "logs", "rm", "token", "usage", "serve"):
        assert f" {command} " in help_text
