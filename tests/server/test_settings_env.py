"""``NEOCLOUD_*`` settings: an empty value is unset, a bad one a usage error naming it.

Found: ``NEOCLOUD_PUBLIC_METRICS= neocloud up`` (and ``' 1'``, ``2``) printed ``Error:
internal error (ValidationError ...)``, exit code 1. Now an empty value counts as unset for
every setting (as for ``NEOCLOUD_TOKEN``/``NEOCLOUD_URL``), and a value that does not
parse is a usage error (exit code 2) naming the variable and the values it accepts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from neocloud.cli.main import app as cli_app
from neocloud.gateway.runner import public_metrics_from_env
from neocloud.server import launch
from neocloud.server.settings import InvalidSetting, Settings, load_settings
from tests.conftest import free_port


def test_an_empty_value_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PUBLIC_METRICS", "PORT", "RECONCILE_INTERVAL_S", "HOST", "DATABASE_URL"):
        monkeypatch.setenv(f"NEOCLOUD_{name}", "")
    s = load_settings()
    assert s.public_metrics is False and s.port == 8700 and s.host == "127.0.0.1"
    assert s.reconcile_interval_s == Settings.model_fields["reconcile_interval_s"].default
    assert s.resolved_database_url().startswith("sqlite:///")
    assert public_metrics_from_env({"NEOCLOUD_PUBLIC_METRICS": ""}) is False


@pytest.mark.parametrize(("name", "value", "accepted"), [
    ("PUBLIC_METRICS", " 1", "1, 0, true, false"),
    ("PUBLIC_METRICS", "2", "1, 0, true, false"),
    ("PORT", "eighty", "a whole number"),
    ("USAGE_PERIOD_S", "1m", "a number"),
])
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, name: str,
                                        value: str, accepted: str) -> None:
    monkeypatch.setenv(f"NEOCLOUD_{name}", value)
    with pytest.raises(InvalidSetting) as info:
        load_settings()
    err = info.value
    assert err.param == f"NEOCLOUD_{name}" and err.code == "invalid_setting"
    assert f"NEOCLOUD_{name}={value!r}" in err.message and accepted in err.message


@pytest.mark.parametrize("command", ["up", "server"])
@pytest.mark.parametrize("value", [" 1", "2"])
def test_cli_up_with_a_bad_value_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, value: str) -> None:
    monkeypatch.setattr(launch, "_run", lambda settings, **kw: None)
    r = CliRunner().invoke(cli_app, [command], env={
        "NEOCLOUD_HOME": str(tmp_path), "NEOCLOUD_PUBLIC_METRICS": value, "COLUMNS": "300"})
    out = " ".join(r.output.split())
    assert r.exit_code == 2, out
    assert "NEOCLOUD_PUBLIC_METRICS" in out and "1, 0, true, false, yes, no" in out, out
    assert "internal error" not in out
    assert not (tmp_path / "neocloud.db").exists()


def test_cli_up_with_an_empty_value_starts(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Settings] = []
    monkeypatch.setattr(launch, "_run", lambda settings, **kw: started.append(settings))
    r = CliRunner().invoke(cli_app, ["up", "--port", str(free_port())], env={
        "NEOCLOUD_HOME": str(tmp_path), "NEOCLOUD_PUBLIC_METRICS": "",
        "NEOCLOUD_REGISTER_LOCAL_NODE": "false"})
    assert r.exit_code == 0, r.output
    assert started and started[0].public_metrics is False
