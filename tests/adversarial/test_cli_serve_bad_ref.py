"""``neocloud serve`` with a service reference that cannot be loaded prints a Python
traceback (ValueError from the loader) instead of a one-line message with a usage exit
code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import free_port


@pytest.mark.parametrize("ref", ["nosuch_module_xyz.mod:X", "/nonexistent/dir/svc.py:X"])
def test_serve_unknown_service_prints_a_message(ref: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEOCLOUD_")}
    p = subprocess.run([sys.executable, "-m", "neocloud", "serve", ref, "--port",
                        str(free_port())], capture_output=True, text=True, timeout=60, env=env)
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out[-2000:]
    assert p.returncode == 2, (p.returncode, out[-2000:])
    assert "nosuch_module_xyz" in out or "svc.py" in out
