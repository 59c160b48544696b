"""One control plane per data folder: the lock ``neocloud up`` holds on its home.

Invariant: at most one process runs the control plane of a data folder whose database is
SQLite. Two of them ran the reconcilers on one database side by side (every workload was
driven twice), the second rewrote the CLI config to its own URL, and when it stopped it
stopped every local workload, the first one's included: running jobs were requeued and
lost their progress, pods and replicas were restarted.

The lock is an exclusive ``flock`` on ``<home>/control-plane.lock``, held for the life of
the process; the kernel releases it when the process ends in any way (``kill -9``
included), so a crashed control plane never blocks the next start. The file holds the
holder's pid and URL, for the message a second start prints.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO

from neocloud.errors import Unavailable
from neocloud.server.datafolder import make_private_dirs, open_private

LOCK_FILE = "control-plane.lock"


class HomeInUse(Unavailable):
    """Another live process runs the control plane of this data folder."""

    default_code = "home_in_use"


def hold_home(home: Path, *, url: str) -> IO[str]:
    """Take the data folder ``home`` for this process; keep the returned file open (the
    lock lasts as long as it does).

    Raises:
        HomeInUse: another process holds it (the message names its pid and URL).
    """
    make_private_dirs(home)
    path = home / LOCK_FILE
    f = os.fdopen(open_private(path, os.O_RDWR), "r+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(f)
        f.close()
        raise HomeInUse(
            f"the data folder {home} is in use by another control plane{holder}; stop it "
            "first, or give this one another --home") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "url": url}))
    f.flush()
    return f


def _holder(f: IO[str]) -> str:
    try:
        f.seek(0)
        info = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return ""
    if not isinstance(info, dict):
        return ""
    parts = [f"pid {info['pid']}" if isinstance(info.get("pid"), int) else "",
             str(info["url"]) if isinstance(info.get("url"), str) else ""]
    text = ", ".join(p for p in parts if p)
    return f" ({text})" if text else ""
