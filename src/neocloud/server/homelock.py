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

The same holds per SQLite database file (:func:`hold_database`): a second control plane
given another data folder but the first one's database (``NEOCLOUD_DATABASE_URL``) was
accepted, as the home lock did not see it. The lock file lies next to the database,
``<database>-control-plane.lock``, named after the file's real path (symbolic links and
``..`` resolved), so every URL of one file takes the same lock. It is a file of its own:
an ``flock`` or a ``close`` on the database file itself would touch the POSIX locks SQLite
holds on it (closing any descriptor of a file drops the process's POSIX locks on it).
PostgreSQL is not locked: several control-plane copies may share one PostgreSQL database.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, NoReturn

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from neocloud.errors import Unavailable
from neocloud.server.datafolder import make_private_dirs, open_private

LOCK_FILE = "control-plane.lock"

#: Appended to a SQLite database file's name for its lock file.
DATABASE_LOCK_SUFFIX = "-control-plane.lock"


class HomeInUse(Unavailable):
    """Another live process runs the control plane of this data folder."""

    default_code = "home_in_use"


class DatabaseInUse(Unavailable):
    """Another live process runs a control plane on this SQLite database file."""

    default_code = "database_in_use"


def hold_home(home: Path, *, url: str) -> IO[str]:
    """Take the data folder ``home`` for this process; keep the returned file open (the
    lock lasts as long as it does).

    Raises:
        HomeInUse: another process holds it (the message names its pid and URL).
    """
    make_private_dirs(home)
    f = _lock(home / LOCK_FILE, url)
    if f is None:
        _refuse(home / LOCK_FILE, lambda holder: HomeInUse(
            f"the data folder {home} is in use by another control plane{holder}; stop it "
            "first, or give this one another --home"))
    return f


def sqlite_file(database_url: str) -> Path | None:
    """The database file of a SQLite ``database_url``, with its real path; ``None`` for
    another database (PostgreSQL), an in-memory one, or a URL that does not parse."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        return None
    name = url.database
    if url.get_backend_name() != "sqlite" or not name or name == ":memory:" \
            or (name.startswith("file:") and "memory" in database_url):
        return None
    if name.startswith("file:"):
        name = name[len("file:"):].split("?", 1)[0]
    return Path(os.path.realpath(Path(name).expanduser()))


def hold_database(database_url: str, *, url: str) -> IO[str] | None:
    """Take the SQLite database of ``database_url`` for this process, as
    :func:`hold_home` takes a data folder; ``None`` (nothing held) for a database that is
    not a SQLite file: PostgreSQL is shared by design.

    Raises:
        DatabaseInUse: another process holds it (the message names the database, the
            holder's pid and URL).
    """
    db = sqlite_file(database_url)
    if db is None:
        return None
    make_private_dirs(db.parent)
    path = db.with_name(db.name + DATABASE_LOCK_SUFFIX)
    f = _lock(path, url)
    if f is None:
        _refuse(path, lambda holder: DatabaseInUse(
            f"the database {db} is in use by another control plane{holder}; stop it "
            "first, or give this one another database"))
    return f


def _refuse(path: Path, error: Callable[[str], Unavailable]) -> NoReturn:
    """Raise ``error(holder)`` for the lock file ``path`` another process holds, with the
    holder (`` (pid N, URL)``) read from it."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = _holder(f)
    except OSError:
        holder = ""
    raise error(holder)


def _lock(path: Path, url: str) -> IO[str] | None:
    """``path`` opened and locked (``flock``, exclusive) with this process's pid and
    ``url`` written in it; ``None`` when another open file holds the lock."""
    f = os.fdopen(open_private(path, os.O_RDWR), "r+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
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
