"""Start and stop the processes a gateway benchmark needs (loopback only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status: the server is up
                return
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up within {timeout_s} s")


def start_upstream(port: int, uds: str | None = None, env: dict[str, str] | None = None
                   ) -> subprocess.Popen[bytes]:
    """The echo replica under uvicorn (httptools, uvloop), one process, on TCP ``port`` or
    on the Unix socket ``uds``; ``env`` adds environment variables (its pacing)."""
    where = ["--uds", uds] if uds else ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "echo_upstream:app", "--app-dir", str(HERE), *where,
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        start_new_session=True, env={**os.environ, **(env or {})},
    )
    if uds:
        deadline = time.monotonic() + 20
        while not os.path.exists(uds) and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        _wait_http(f"http://127.0.0.1:{port}/stream?n=1")
    return proc


def start_gateway(port: int, upstream_url: str, token: str, workers: int = 1,
                  server: str = "neocloud") -> subprocess.Popen[bytes]:
    """A standalone gateway copy routing ``echo`` to ``upstream_url`` (``server`` is the
    HTTP server: ``neocloud`` or ``uvicorn``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "neocloud.gateway", "--host", "127.0.0.1", "--port", str(port),
         "--route", f"echo={upstream_url}", "--token", token, "--workers", str(workers),
         "--server", server],
        start_new_session=True,
    )
    _wait_http(f"http://127.0.0.1:{port}/health")
    return proc


def start_process(args: list[str], health_url: str) -> subprocess.Popen[bytes]:
    """``python ARGS`` in its own process group, returned once ``health_url`` answers."""
    proc = subprocess.Popen([sys.executable, *args], start_new_session=True)
    _wait_http(health_url)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started here (its own process group) and wait for it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
