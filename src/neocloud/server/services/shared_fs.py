"""The shared-folder check of ``neocloud node join``.

On many machines, a workload on a joined server reads and writes the control plane's data
folder (job working folders, volumes) at the same path, so that folder must be on a
filesystem every server mounts there. At join, the control plane writes a marker file
with a random token into its volumes folder (:func:`write_marker`, ``POST
/nodes/join/check``) and the joining server reads it back at the path it was given
(:func:`check_marker`): a server that cannot is told so before its Ray node starts.

Markers are small files under ``<volumes root>/.join-checks/``; those older than
:data:`MARKER_TTL_S` are removed at each new check.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

#: Folder of the markers, inside the volumes root.
CHECK_DIR = ".join-checks"
#: Seconds a marker is kept (a join reads it within seconds).
MARKER_TTL_S = 600.0


@dataclass(frozen=True)
class Marker:
    """A marker file and the token it holds."""

    path: Path
    token: str


def write_marker(root: Path, *, now: float | None = None) -> Marker:
    """Write a new marker under ``root`` (the volumes folder) and remove the stale ones.

    Raises:
        OSError: the folder cannot be written.
    """
    folder = root / CHECK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    at = time.time() if now is None else now
    for entry in os.scandir(folder):
        try:
            if entry.is_file(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_mtime < at - MARKER_TTL_S:
                os.unlink(entry.path)
        except OSError:
            continue  # removed meanwhile by another check
    token = secrets.token_hex(16)
    path = folder / f"{token[:12]}.marker"
    path.write_text(token)
    return Marker(path=path, token=token)


def check_marker(path: str, token: str) -> str | None:
    """On the joining server: ``None`` when the marker at ``path`` holds ``token``, else
    what is wrong, in words an operator can act on."""
    folder = str(Path(path).parent.parent)
    advice = (f"a cloud of many machines needs the control plane's data folder ({folder}) "
              "on a filesystem every server mounts at the same path (e.g. NFS); mount it, "
              "or join with --no-shared-check for a server that runs no job or pod")
    try:
        found = Path(path).read_text().strip()
    except FileNotFoundError:
        return f"the control plane's volumes folder is not shared with this server: " \
               f"{path} is missing here; {advice}"
    except OSError as e:
        return f"this server cannot read {path} ({e.strerror}); {advice}"
    if found != token:
        return f"{path} on this server is not the control plane's file (another folder " \
               f"is mounted at that path); {advice}"
    return None
