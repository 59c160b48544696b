"""A second ``neocloud up`` on a data folder whose control plane is running, and the start
after a ``kill -9``.

Found: the second ``up`` started (another port), ran the reconcilers on the same SQLite
database beside the first, rewrote the CLI config to its own URL, and on exit stopped
every local workload: the first control plane's running job was requeued (its progress
lost), its pod and replicas restarted, and the CLI pointed at a dead URL. Now the second
start is refused (``home_in_use``, naming the holder) before it touches anything; a
holder killed with ``kill -9`` leaves no lock behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neocloud.server import launch
from neocloud.server.homelock import LOCK_FILE, HomeInUse, hold_home
from tests.conftest import free_port

HOLD = """
import sys, time
from pathlib import Path
from neocloud.server.homelock import hold_home
lock = hold_home(Path(sys.argv[1]), url="http://127.0.0.1:1")
print("held", flush=True)
time.sleep(600)
"""


def _holder(home: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(home)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_second_up_on_a_home_in_use_is_refused_before_it_touches_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text('{"url": "http://127.0.0.1:1", "token": "t"}')
    monkeypatch.setenv("NEOCLOUD_HOME", str(home))
    holder = _holder(home)
    try:
        with pytest.raises(HomeInUse) as info:
            launch.up(port=free_port(), home=home)
        assert f"pid {holder.pid}" in info.value.message
        assert info.value.status == 503 and info.value.code == "home_in_use"
        assert not (home / "neocloud.db").exists()  # no database, no bootstrap token
        assert json.loads((home / "config.json").read_text())["url"] == "http://127.0.0.1:1"
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)  # kill -9: no cleanup runs
    holder.wait()
    assert holder.stdout is not None
    holder.stdout.close()
    assert (tmp_path / LOCK_FILE).exists()
    lock = hold_home(tmp_path, url="http://127.0.0.1:2")
    try:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(HomeInUse):
            hold_home(tmp_path, url="http://127.0.0.1:3")  # held by this process now
    finally:
        lock.close()
    hold_home(tmp_path, url="http://127.0.0.1:4").close()  # released on close


@pytest.mark.slow
def test_cli_second_up_prints_one_line_and_the_first_keeps_running(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEOCLOUD_")}
    env["NEOCLOUD_HOME"] = str(home)
    env["NEOCLOUD_REGISTER_LOCAL_NODE"] = "false"
    port = free_port()
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "neocloud", "up", "--port", str(port)],
                             env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not (home / LOCK_FILE).exists() or not (home / "config.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "first.log").read_text())
            time.sleep(0.2)
        config = (home / "config.json").read_text()
        second = subprocess.run(
            [sys.executable, "-m", "neocloud", "up", "--port", str(free_port())],
            env=env, capture_output=True, text=True, timeout=120)
        out = second.stdout + second.stderr
        assert second.returncode != 0, out
        assert "Traceback" not in out and "in use by another control plane" in out, out
        assert f"pid {first.pid}" in out, out
        assert (home / "config.json").read_text() == config
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        log.close()
