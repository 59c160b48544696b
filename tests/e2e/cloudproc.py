"""Run ``neocloud up`` as a real process for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CloudProcess:
    """``python -m neocloud up`` in its own session, with its own data folder."""

    def __init__(self, home: Path, *, port: int | None = None, db_url: str | None = None):
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "NEOCLOUD_HOME": str(home),
                    "NEOCLOUD_RECONCILE_INTERVAL_S": "0.3"}
        for k in ("NEOCLOUD_URL", "NEOCLOUD_TOKEN"):
            self.env.pop(k, None)
        if db_url:
            self.env["NEOCLOUD_DATABASE_URL"] = db_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> CloudProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "up.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "neocloud", "up", "--port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"neocloud up exited: {self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"neocloud up did not start: {self.log()[-3000:]}")

    @property
    def token(self) -> str:
        return json.loads((self.home / "config.json").read_text())["token"]

    def log(self) -> str:
        try:
            return (self.home / "up.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the control plane dies at once, its replicas keep running."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, as a service manager would; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)
