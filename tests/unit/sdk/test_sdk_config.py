from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from neocloud import config
from neocloud.errors import InvalidRequest
from neocloud.sdk import Client


def test_save_config_writes_owner_only_json(isolated_home: Path) -> None:
    path = config.save_config("http://10.0.0.1:9000", "nc-secret")
    assert path == isolated_home / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": "http://10.0.0.1:9000", "token": "nc-secret"}
    assert config.load_config() == config.CliConfig("http://10.0.0.1:9000", "nc-secret")
    # Saving again replaces the file and leaves no temporary file behind.
    config.save_config("http://10.0.0.1:9001", "nc-other")
    assert config.load_config().url == "http://10.0.0.1:9001"
    assert [p.name for p in isolated_home.iterdir()] == ["config.json"]


def test_home_dir_defaults_to_dot_neocloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NEOCLOUD_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.home_dir() == tmp_path / ".neocloud"


def test_missing_config_is_empty_and_url_defaults() -> None:
    assert config.load_config() == config.CliConfig()
    assert config.resolve() == config.Connection(config.DEFAULT_URL, None)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"url": 5}'])
def test_malformed_config_names_the_file(isolated_home: Path, content: str) -> None:
    isolated_home.mkdir()
    (isolated_home / "config.json").write_text(content)
    with pytest.raises(InvalidRequest, match="config.json"):
        config.load_config()


def test_precedence_arguments_then_env_then_file(monkeypatch: pytest.MonkeyPatch) -> None:
    config.save_config("http://file:1", "file-token")
    assert config.resolve() == config.Connection("http://file:1", "file-token")
    monkeypatch.setenv("NEOCLOUD_URL", "http://env:2/")
    assert config.resolve() == config.Connection("http://env:2", "file-token")
    monkeypatch.setenv("NEOCLOUD_TOKEN", "env-token")
    assert config.resolve() == config.Connection("http://env:2", "env-token")
    assert config.resolve("http://arg:3", None) == config.Connection("http://arg:3", "env-token")
    assert config.resolve(None, "arg-token") == config.Connection("http://env:2", "arg-token")
    client = Client("http://arg:3", "arg-token")
    assert (client.url, client.token) == ("http://arg:3", "arg-token")
    client.close()


def test_env_overrides_skip_a_broken_config_file(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_home.mkdir()
    (isolated_home / "config.json").write_text("{broken")
    monkeypatch.setenv("NEOCLOUD_URL", "http://env:2")
    monkeypatch.setenv("NEOCLOUD_TOKEN", "env-token")
    assert config.resolve() == config.Connection("http://env:2", "env-token")
