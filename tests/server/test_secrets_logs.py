"""Logs are masked when they are written: the local backend runs a workload with a log under
:mod:`neocloud.logrun`, so the file never holds a secret value, and the process keeps the
contract of the backend (pid, exit code, signal death, stop, adoption)."""

from __future__ import annotations

import base64
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest

from neocloud.server.backends.base import WorkloadSpec, masked_env_names
from neocloud.server.backends.local import LocalBackend

VALUE = "db-pass/4f9a+1c77=e2d8"
KEY = "abcd-1234-efgh"

PRINTS = """
import base64, os, sys, time, urllib.parse
v = os.environ["DB"]
print("plain", v)
print("b64", base64.b64encode(v.encode()).decode())
print("basic", base64.b64encode(("user:" + v).encode()).decode())
print("url", urllib.parse.quote(v, safe=""))
sys.stdout.write("unfinished " + v)
sys.stdout.flush()
time.sleep(0.6)
sys.stdout.write(" line\\n")
print("key", os.environ["MY_API_KEY"], file=sys.stderr)
print("mask env seen:", "NEOCLOUD_MASK_ENV" in os.environ)
sys.exit(3)
"""


@pytest.fixture
def backend() -> Iterator[LocalBackend]:
    be = LocalBackend()
    yield be
    be.close()


def wait_exit(be: LocalBackend, handle: dict[str, object], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while be.inspect(handle).running:
        assert time.monotonic() < deadline, "the process did not exit"
        time.sleep(0.05)


def spec(tmp_path: Path, wid: str, code: str, **kw: object) -> WorkloadSpec:
    return WorkloadSpec(workload_id=wid, command=[sys.executable, "-c", code],
                        log_path=tmp_path / "logs" / "jobs" / f"{wid}.log", **kw)  # type: ignore[arg-type]


def test_masked_env_names() -> None:
    s = WorkloadSpec(workload_id="w", command=["x"], env={"DB": "1", "MY_API_KEY": "2",
                                                            "MODEL": "3"},
                     secret_env=frozenset({"DB"}))
    assert masked_env_names(s) == ["DB", "MY_API_KEY"]


def test_log_file_never_holds_a_secret(backend: LocalBackend, tmp_path: Path) -> None:
    s = spec(tmp_path, "w-leak", PRINTS, env={"DB": VALUE, "MY_API_KEY": KEY},
             secret_env=frozenset({"DB"}))
    handle = backend.start(s)
    wait_exit(backend, handle)
    assert backend.inspect(handle).exit_code == 3  # the command's own code
    raw = Path(str(handle["log_path"])).read_bytes()
    forms = [VALUE, KEY, base64.b64encode(VALUE.encode()).decode(), quote(VALUE, safe="")]
    for form in forms:
        assert form.encode() not in raw, (form, raw)
    text = raw.decode()
    for line in ("plain ***", "b64 ***", "url ***", "unfinished *** line", "key ***",
                 "mask env seen: False"):
        assert line in text, text
    assert backend.logs(handle) == text
    log = Path(str(handle["log_path"]))
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    for d in (log.parent, log.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_nothing_to_mask_runs_the_command_itself(backend: LocalBackend,
                                                 tmp_path: Path) -> None:
    code = "import os; print('pid', os.getpid())"
    handle = backend.start(spec(tmp_path, "w-plain", code, env={"MODEL": "minilm"}))
    wait_exit(backend, handle)
    assert backend.logs(handle).split() == ["pid", str(handle["pid"])]  # exec: same pid


def test_signals_stop_and_adoption(backend: LocalBackend, tmp_path: Path) -> None:
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', os.environ['DB']),"
            " sys.exit(0)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    s = spec(tmp_path, "w-stop", code, env={"DB": VALUE}, secret_env=frozenset({"DB"}))
    handle = backend.start(s)
    deadline = time.monotonic() + 30
    while "ready" not in backend.logs(handle):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    found = backend.find("w-stop")  # after a restart: the writer is the workload's top
    assert found is not None and found["pid"] == handle["pid"]
    assert found["log_path"] == handle["log_path"]
    top = psutil.Process(int(str(handle["pid"])))
    assert "neocloud.logrun" in " ".join(top.cmdline())
    state = backend.stop(handle, grace_s=10)
    assert not state.running and state.exit_code == 0
    text = backend.logs(handle)
    assert "got SIGTERM ***" in text and VALUE not in text  # the last line was copied


def test_death_by_signal_is_reported_as_such(backend: LocalBackend, tmp_path: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    handle = backend.start(spec(tmp_path, "w-kill", code, env={"DB": VALUE},
                                secret_env=frozenset({"DB"})))
    wait_exit(backend, handle)
    assert backend.inspect(handle).exit_code == -9


def test_missing_command(backend: LocalBackend, tmp_path: Path) -> None:
    s = WorkloadSpec(workload_id="w-missing", command=["/nonexistent/cmd"],
                     env={"DB": VALUE}, secret_env=frozenset({"DB"}),
                     log_path=tmp_path / "m.log")
    handle = backend.start(s)
    wait_exit(backend, handle)
    assert backend.inspect(handle).exit_code == 127
    assert "cannot run '/nonexistent/cmd'" in backend.logs(handle)
    assert os.stat(tmp_path / "m.log").st_mode & 0o077 == 0
