"""CLI errors are messages, never tracebacks: bad flag values, URLs, tokens and paths end
with a clear message and a non-zero exit code, through the one error boundary of
:mod:`neocloud.cli.main`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fakecloud import ADMIN_TOKEN, BASE, FakeCloud
from typer.testing import CliRunner, Result

from neocloud.cli.context import CliState
from neocloud.cli.main import app
from neocloud.sdk.deployments import Deployments

BAD_URL = "http://[::1"
BAD_TOKEN = "nc-ab\udcffcd"  # a non-UTF-8 byte on the command line (surrogate escape)


def invoke(cloud: FakeCloud | None, *args: str, login: bool = True) -> Result:
    state = CliState(transport=cloud.transport if cloud else None)
    if login:
        state.url, state.token = BASE, ADMIN_TOKEN
    return CliRunner().invoke(app, list(args), obj=state)


def flat(text: str) -> str:
    """``text`` without the boxes and line breaks of a usage error panel."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())


def assert_message(result: Result, *needles: str) -> None:
    text = flat(result.output)
    assert result.exit_code != 0, text
    assert "Traceback" not in text, text
    assert isinstance(result.exception, SystemExit), (result.exception, text)
    for needle in needles:
        assert needle in text, text


def blocked_path(tmp_path: Path) -> Path:
    """A path no one can create, even root: its parent is a regular file."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return f / "home"


def test_bad_url() -> None:
    result = invoke(None, "--url", BAD_URL, "ls", login=False)
    assert_message(result, "--url", "not a valid URL")
    assert result.exit_code == 2
    result = invoke(None, "--url", "localhost:8700", "ls", login=False)
    assert_message(result, "--url", "http(s) URL")


def test_bad_url_from_the_environment() -> None:
    result = CliRunner().invoke(app, ["ls"], env={"NEOCLOUD_URL": BAD_URL})
    assert_message(result, "NEOCLOUD_URL", "not a valid URL")


def test_token_with_a_non_ascii_byte_is_named_not_echoed() -> None:
    result = invoke(None, "--token", BAD_TOKEN, "ls", login=False)
    assert_message(result, "--token", "not visible ASCII")
    assert "nc-ab" not in result.output
    result = CliRunner().invoke(app, ["ls"], env={"NEOCLOUD_TOKEN": "nc-é"})
    assert_message(result, "NEOCLOUD_TOKEN", "not visible ASCII")


def test_empty_token_is_an_error_not_a_fall_back(isolated_home: Path) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.json").write_text(f'{{"url": "{BASE}", "token": "nc-saved"}}')
    for args in (["--token", "", "ls"], ["--url", "", "ls"]):
        result = invoke(None, *args, login=False)
        assert_message(result, "must not be empty")
        assert result.exit_code == 2


def test_up_on_an_unwritable_home(tmp_path: Path) -> None:
    home = blocked_path(tmp_path)
    result = invoke(None, "up", "--home", str(home), "--port", "47191", login=False)
    assert_message(result, str(home.parent), "Not a directory")


def test_the_three_reproducers_in_a_real_process(tmp_path: Path) -> None:
    """The console script itself, as a user runs it (bytes on argv, no CliRunner)."""
    env = {**os.environ, "NEOCLOUD_HOME": str(tmp_path / "h")}
    env.pop("NEOCLOUD_URL", None)
    env.pop("NEOCLOUD_TOKEN", None)
    cli = [sys.executable, "-c", "from neocloud.cli.main import main; main()"]
    cases = [
        ([b"--url", BAD_URL.encode(), b"ls"], b"--url"),
        ([b"--url", b"http://127.0.0.1:1", b"--token", b"nc-ab\xffcd", b"ls"], b"--token"),
        ([b"up", b"--home", str(blocked_path(tmp_path)).encode()], b"Not a directory"),
        ([b"--token", b"", b"ls"], b"must not be empty"),
    ]
    for args, needle in cases:
        done = subprocess.run([*(a.encode() for a in cli), *args], env=env,
                              capture_output=True, timeout=60)
        out = flat((done.stdout + done.stderr).decode(errors="replace"))
        assert done.returncode != 0, out
        assert "Traceback" not in out, out
        assert needle.decode() in out, out


SWEEP = [
    ["deploy", "web", "--service", "embeddings", "--replicas", "-1"],
    ["deploy", "web", "--service", "embeddings", "--replicas", "many"],
    ["deploy", "Bad_Name", "--service", "embeddings", "--no-wait"],
    ["deploy", "web", "--service", "embeddings", "--env", "NOEQUALS", "--no-wait"],
    ["deploy", "web", "--service", "embeddings", "--env", "1X=y", "--no-wait"],
    ["deploy", "web", "--service", "embeddings", "--env", "A=\x00", "--no-wait"],
    ["deploy", "web", "--service", "embeddings", "--secret", "X", "--no-wait"],
    ["deploy", "web", "--service", "/nonexistent/file.py:Svc", "--no-wait"],
    ["deploy", "web", "--service", "embeddings", "--timeout", "-1"],
    ["scale", "web", "-5"],
    ["scale", "web", "abc"],
    ["logs", "web", "--tail", "-1"],
    ["logs", "web", "--tail", "x"],
    ["status", "no-such-deployment"],
    ["rm", "no-such-deployment"],
    ["job", "create", "j", "--workers", "0", "--", "echo"],
    ["job", "create", "j"],
    ["job", "create", "j", "--volume", "no-colon", "--", "echo"],
    ["job", "create", "j", "--time-limit", "-3", "--", "echo"],
    ["job", "create", "j", "--shape", "", "--", "echo"],
    ["job", "logs", "j", "--worker", "abc"],
    ["pod", "create", "p", "--ssh-key", "/nonexistent/key.pub"],
    ["pod", "create", "p", "--mount", "no-colon"],
    ["pod", "create", "p", "--idle-timeout", "-1"],
    ["secret", "set", "bad name", "--value", "x"],
    ["volume", "create", "Bad_Volume"],
    ["volume", "upload", "v", "/nonexistent/file"],
    ["volume", "download", "v", "a.txt", "/proc/no/such/dir/file"],
    ["audit", "--since", "yesterday-ish"],
    ["audit", "--limit", "0"],
    ["serve", "embeddings", "--port", "70000"],
    ["serve", "/nonexistent/svc.py:Svc", "--port", "0"],
    ["up", "--port", "99999"],
    ["simulate", "--seed", "x"],
    ["--request-timeout", "0", "ls"],
    ["token", "create", "t", "--role", "superuser"],
    ["quota", "set", "default", "--gpus", "-1"],
    ["node", "rm", "no-such-node"],
    ["shape", "add", "x", "--price", "free"],
]


@pytest.mark.parametrize("args", SWEEP, ids=lambda a: " ".join(a)[:60])
def test_bad_values_never_print_a_traceback(cloud: FakeCloud, args: list[str]) -> None:
    result = invoke(cloud, *args)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert result.output.strip(), "no message"


@pytest.mark.parametrize(("exc", "needle"), [
    (OSError(28, "No space left on device", "/data/x"), "/data/x: No space left on device"),
    (httpx.RemoteProtocolError("peer closed connection"), "request failed: peer closed"),
    (UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range(128)"), "cannot be encoded"),
    (ValueError("boom"), "internal error (ValueError: boom)"),
])
def test_every_error_kind_becomes_a_message(cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch,
                                            exc: Exception, needle: str) -> None:
    def fail(*_a: object, **_k: object) -> None:
        raise exc

    monkeypatch.setattr(Deployments, "list", fail)
    result = invoke(cloud, "ls")
    assert_message(result, needle)
    assert result.exit_code == 1


def test_debug_shows_the_traceback_of_a_bug(cloud: FakeCloud,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a: object, **_k: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(Deployments, "list", fail)
    monkeypatch.setenv("NEOCLOUD_DEBUG", "1")
    result = invoke(cloud, "ls")
    assert isinstance(result.exception, ValueError)


def test_a_rejected_sensitive_value_is_not_echoed(cloud: FakeCloud) -> None:
    result = invoke(cloud, "job", "create", "j", "--env", "MY_API_KEY=sk-live-77\x00", "--",
                    "echo")
    assert_message(result, "--env", "NUL", "'***'")
    assert "sk-live-77" not in result.output
