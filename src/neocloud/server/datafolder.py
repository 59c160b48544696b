"""The data folder is private to the user who runs the control plane.

Invariant: the data folder (``<home>``) and every folder in it are mode ``0700``, every
file in it ``0600``: the database (SQLite and its ``-wal``/``-shm`` files), logs, keys,
exit codes, pod folders, volume files. Two mechanisms keep it:

* :func:`secure_data_folder`, called once when the control plane starts, sets the
  process's umask to ``077`` (so every file and folder it creates, and those of the
  processes it starts, which inherit the umask, are private from their first byte) and
  tightens a data folder left readable by an older version;
* the code that creates the data folder's files says so itself
  (:func:`open_private`, :func:`make_private_dirs`), so the modes hold even for a process
  that did not go through :func:`secure_data_folder` (tests, tools).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: Mode of every folder under the data folder.
DIR_MODE = 0o700
#: Mode of every file under the data folder.
FILE_MODE = 0o600
#: The umask that gives exactly those modes.
UMASK = 0o077


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and each missing parent with mode ``0700`` (``Path.mkdir(parents=
    True)`` would give the parents the default mode). Existing folders are left as they
    are. Raises ``OSError`` when a folder cannot be created."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask


def open_private(path: Path, flags: int) -> int:
    """``os.open(path, flags | O_CREAT, 0o600)``, and mode ``0600`` forced on a file that
    existed with another mode; returns the file descriptor."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(root: Path) -> None:
    """Give ``root`` and every folder under it mode ``0700`` and every regular file
    ``0600`` (symbolic links are not followed; entries of other users are skipped)."""
    uid = os.geteuid()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, d) for d in dirnames)]:
            _chmod_own(name, DIR_MODE, uid, want_dir=True)
        for f in filenames:
            _chmod_own(os.path.join(dirpath, f), FILE_MODE, uid, want_dir=False)


def _chmod_own(path: str, mode: int, uid: int, *, want_dir: bool) -> None:
    try:
        st = os.lstat(path)
    except OSError:
        return
    if st.st_uid != uid or stat.S_ISLNK(st.st_mode):
        return
    if want_dir != stat.S_ISDIR(st.st_mode) or (not want_dir and not stat.S_ISREG(st.st_mode)):
        return
    if stat.S_IMODE(st.st_mode) != mode:
        try:
            os.chmod(path, mode)
        except OSError:
            pass


def secure_data_folder(home: Path) -> None:
    """Make ``home`` private (see the module docstring): umask ``077`` for this process,
    ``home`` created with mode ``0700``, and what an older version left readable in it
    tightened (one walk of the folder; a stat per entry).

    Raises:
        OSError: ``home`` cannot be created.
    """
    os.umask(UMASK)
    make_private_dirs(home)
    tighten(home)
