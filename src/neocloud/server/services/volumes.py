"""Volumes: workspace storage, its files, its size, and its mounts into workloads."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neocloud.errors import AlreadyExists, Conflict, InvalidRequest, NotFound, Unsupported
from neocloud.models.volumes import VolumeMount, VolumeOut
from neocloud.server.db.tables import Job, Pod, Volume
from neocloud.server.services import events
from neocloud.server.services.oncommit import after_commit
from neocloud.server.services.removal import delete_locked, lock_for_delete
from neocloud.server.services.upsert import insert_unless_taken
from neocloud.server.storage import FileEntry, VolumeStore, clean_path

_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Job and pod states in which their volumes count as mounted.
LIVE_JOB = ("queued", "starting", "running", "retrying", "stopping")
LIVE_POD = ("queued", "starting", "running", "stopping")


def check_name(name: str, *, param: str = "name") -> None:
    if not _NAME.match(name):
        raise InvalidRequest(
            f"volume name {name!r} is invalid: lower-case letters, digits and '-', "
            "starting with a letter, at most 63 characters", param=param)


def _find(s: Session, *, workspace_id: str, name: str) -> Volume | None:
    return s.scalars(
        select(Volume).where(Volume.workspace_id == workspace_id, Volume.name == name)
    ).first()


def create_volume(s: Session, *, workspace_id: str, name: str, store: VolumeStore) -> Volume:
    """Create an empty volume. Raises :class:`AlreadyExists`, :class:`InvalidRequest`."""
    check_name(name)
    if _find(s, workspace_id=workspace_id, name=name) is not None:
        raise AlreadyExists(f"volume {name!r} already exists", param="name")
    vol = Volume(workspace_id=workspace_id, name=name, measured_at=datetime.now(UTC))
    s.add(vol)
    s.flush()
    _new_folder(store, workspace_id, name)
    events.record(s, workspace_id=workspace_id, kind="volume", name=name, object_id=vol.id,
                  reason="Created", message=f"volume {name} created")
    return vol


def _new_folder(store: VolumeStore, workspace_id: str, name: str) -> None:
    """The folder of a volume just created, empty. Invariant: a new volume never shows
    the files of a deleted one of the same name, which a folder left behind (a removal
    that failed part-way, an upload that outlived its volume) once did."""
    store.delete(workspace_id, name)
    store.create(workspace_id, name)


def ensure_volume(s: Session, *, workspace_id: str, name: str, store: VolumeStore) -> Volume:
    """The volume ``name``, created when missing.

    Invariant: calls that ensure one new volume at the same moment (pods created together
    on one working directory) all get it; exactly one creates it. Through
    :func:`create_volume` the losers hit the unique ``(workspace, name)`` constraint and
    their pod creates answered 409 "a resource of that name already exists".

    Raises:
        InvalidRequest: bad name.
        Conflict: the volume was created by a call whose commit this one cannot see yet.
    """
    vol = _find(s, workspace_id=workspace_id, name=name)
    if vol is not None:
        return vol
    check_name(name)
    created = insert_unless_taken(s, Volume, key=["workspace_id", "name"],
                                  workspace_id=workspace_id, name=name,
                                  measured_at=datetime.now(UTC))
    vol = _find(s, workspace_id=workspace_id, name=name)
    if vol is None:
        raise Conflict(f"volume {name!r} is being created by another call; retry",
                       param="volume")
    if created:
        _new_folder(store, workspace_id, name)
        events.record(s, workspace_id=workspace_id, kind="volume", name=name,
                      object_id=vol.id, reason="Created", message=f"volume {name} created")
    return vol


def get_volume(s: Session, *, workspace_id: str, name: str, param: str = "name") -> Volume:
    """The volume ``name`` of the workspace; :class:`NotFound` for any other workspace's."""
    vol = _find(s, workspace_id=workspace_id, name=name)
    if vol is None:
        raise NotFound(f"volume {name!r} not found", param=param)
    return vol


def list_volumes(s: Session, *, workspace_id: str) -> list[Volume]:
    return list(s.scalars(
        select(Volume).where(Volume.workspace_id == workspace_id).order_by(Volume.name)
    ))


#: Entries in one page of a file listing when the caller names no ``limit``, and the most
#: one page may hold (the bounds of every list route's ``limit``).
FILES_PAGE_DEFAULT = 100
FILES_PAGE_MAX = 1000


def _order(path: str) -> list[str]:
    """Sort key of a listed path: part by part, so a folder's entries follow it at once."""
    return path.split("/")


def list_files(store: VolumeStore, *, workspace_id: str, name: str, path: str = "",
               after: str | None = None, limit: int = FILES_PAGE_DEFAULT
               ) -> tuple[list[FileEntry], bool]:
    """One page of the files and folders under ``path`` (the whole volume for ``""``):
    up to ``limit`` entries in path order (part by part), those after the path ``after``
    when given. Returns ``(entries, has_more)``; the next page is the one after the last
    entry's path. The cursor is a path, not a position: entries added or removed between
    two pages shift nothing (an entry added before the cursor is not seen in this pass).

    Raises:
        InvalidRequest: ``path`` or ``after`` is not a volume path (``param`` names it),
            or ``limit`` is not in ``1..FILES_PAGE_MAX`` (``param="limit"``).
        NotFound: ``path`` names nothing in the volume.
    """
    if not 1 <= limit <= FILES_PAGE_MAX:
        raise InvalidRequest(f"limit must be between 1 and {FILES_PAGE_MAX}", param="limit")
    prefix = clean_path(path, allow_root=True)
    start = clean_path(after, param="after", allow_root=True) if after else ""
    cursor = _order(start) if start else None
    entries = sorted(store.list(workspace_id, name, prefix), key=lambda e: _order(e.path))
    if cursor is not None:
        entries = [e for e in entries if _order(e.path) > cursor]
    return entries[:limit], len(entries) > limit


def mounted_by(s: Session, *, workspace_id: str, name: str) -> list[str]:
    """Live jobs and pods of the workspace that mount the volume (``job/x``, ``pod/y``)."""
    out: list[str] = []
    for job in s.scalars(select(Job).where(Job.workspace_id == workspace_id,
                                           Job.status.in_(LIVE_JOB))):
        if any(m.get("volume") == name for m in job.volumes):
            out.append(f"job/{job.name}")
    for pod in s.scalars(select(Pod).where(Pod.workspace_id == workspace_id,
                                           Pod.status.in_(LIVE_POD))):
        if pod.volume == name or any(m.get("volume") == name for m in pod.volumes):
            out.append(f"pod/{pod.name}")
    return out


def delete_volume(s: Session, *, workspace_id: str, name: str, store: VolumeStore) -> None:
    """Delete a volume and its files (removed once the deletion is committed: a failed
    commit keeps both).

    Of concurrent deletes of one volume exactly one succeeds and removes the files
    (:mod:`.removal`); the mounts are checked under the volume's lock.

    Raises:
        NotFound: no such volume, or another call deleted it first.
        Conflict: a live job or pod mounts it (they are named).
    """
    missing = f"volume {name!r} not found"
    vol = lock_for_delete(s, Volume, _find(s, workspace_id=workspace_id, name=name),
                          missing=missing)
    users = mounted_by(s, workspace_id=workspace_id, name=name)
    pods = [p for p in s.scalars(select(Pod).where(Pod.workspace_id == workspace_id,
                                                    Pod.volume == name))]
    if users:
        raise Conflict(f"volume {name!r} is mounted by {', '.join(users)}; stop them first",
                       param="name")
    if pods:
        raise Conflict(f"volume {name!r} is the working directory of pod "
                       f"{pods[0].name!r}; delete the pod first", param="name")
    delete_locked(s, vol, missing=missing)
    after_commit(s, lambda: store.delete(workspace_id, name), what=f"removing volume {name}")
    events.record(s, workspace_id=workspace_id, kind="volume", name=name, object_id=vol.id,
                  reason="Deleted", message=f"volume {name} deleted")


def measure(vol: Volume, store: VolumeStore) -> Volume:
    """Measure the volume's bytes and files now and store them on the row."""
    vol.size_bytes, vol.file_count = store.measure(vol.workspace_id, vol.name)
    vol.measured_at = datetime.now(UTC)
    return vol


def volume_out(s: Session, vol: Volume) -> VolumeOut:
    return VolumeOut(
        id=vol.id, name=vol.name, size_bytes=vol.size_bytes, file_count=vol.file_count,
        measured_at=vol.measured_at, created_at=vol.created_at,
        mounted_by=mounted_by(s, workspace_id=vol.workspace_id, name=vol.name),
    )


def check_mounts(
    s: Session, *, workspace_id: str, mounts: list[VolumeMount], param: str = "volumes"
) -> None:
    """Every mounted volume exists in the workspace and no two mounts share a path.

    Raises:
        NotFound: unknown volume (``param="volumes.<i>.volume"``).
        InvalidRequest: two mounts at one path (``param="volumes.<i>.path"``).
    """
    seen: set[str] = set()
    for i, m in enumerate(mounts):
        get_volume(s, workspace_id=workspace_id, name=m.volume, param=f"{param}.{i}.volume")
        key = m.path.strip("/")
        if key in seen:
            raise InvalidRequest(f"two volumes are mounted at {m.path!r}",
                                 param=f"{param}.{i}.path")
        seen.add(key)


def env_var(volume: str) -> str:
    """``NEOCLOUD_VOLUME_<NAME>``: the variable holding a mounted volume's real folder."""
    return "NEOCLOUD_VOLUME_" + re.sub(r"[^A-Z0-9]", "_", volume.upper())


def prepare_mounts(
    store: VolumeStore, *, workspace_id: str, mounts: list[dict[str, Any]], workdir: Path
) -> dict[str, str]:
    """Make the mounts of a workload whose working directory is ``workdir`` (local backend):
    a link per mount inside ``workdir`` (``/data`` and ``data`` both become
    ``<workdir>/data``) to the volume's folder. Returns the env ``NEOCLOUD_VOLUME_<NAME>``.

    Raises:
        Unsupported: the store has no local folders (another backend must mount it).
    """
    env: dict[str, str] = {}
    for m in mounts:
        folder = store.local_path(workspace_id, m["volume"])
        if folder is None:
            raise Unsupported("this volume store cannot be mounted on the local backend")
        folder.mkdir(parents=True, exist_ok=True)
        link = workdir / m["path"].strip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.is_symlink() and os.readlink(link) == str(folder):
                env[env_var(m["volume"])] = str(folder)
                continue
            if link.is_symlink() or link.is_file():
                link.unlink()
            else:
                raise InvalidRequest(f"mount path {m['path']!r} is an existing folder",
                                     param="volumes")
        link.symlink_to(folder, target_is_directory=True)
        env[env_var(m["volume"])] = str(folder)
    return env
