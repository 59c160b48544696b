"""Volumes as folders: ``<root>/<workspace id>/<volume name>/``.

Uploads are written to ``<root>/.uploads/`` first and moved into place once complete, so a
reader never sees half a file and a broken upload leaves nothing in the volume. Uploads a
crash left there (the process died before it could remove them) are removed when a store
opens on the folder, once no byte was written to them for :data:`STALE_UPLOAD_S`.

Invariants kept here:

- a full disk (``ENOSPC``) or a spent disk quota (``EDQUOT``) is answered
  :class:`~neocloud.errors.InsufficientStorage` (507), the partial upload removed and
  the file it was to replace left as it was;
- an upload never brings back a deleted volume: the folders it makes are made under the
  volume's folder only, which must still exist (else ``NotFound``).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio

from neocloud.errors import (
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)
from neocloud.server.storage.base import FileEntry

#: Seconds without a write after which a file in ``.uploads/`` is an upload a crash left
#: behind (a live upload writes to it with every chunk it receives).
STALE_UPLOAD_S = 3600.0
#: ``errno`` values that mean the storage is full.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_full(volume: str) -> InsufficientStorage:
    """The error of an upload the storage had no room for."""
    return InsufficientStorage(
        f"no space left for volume {volume!r}: the storage is full; nothing was stored "
        "(delete files or ask the operator for room)", param="body")


class LocalVolumeStore:
    """A :class:`~neocloud.server.storage.base.VolumeStore` on a local (or shared) folder.

    Opening one removes the stale uploads of ``<root>/.uploads/``
    (:meth:`remove_stale_uploads`).
    """

    def __init__(self, root: Path):
        self.root = root
        self.remove_stale_uploads()

    def remove_stale_uploads(self, older_than_s: float = STALE_UPLOAD_S) -> int:
        """Remove the partial uploads nothing wrote to for ``older_than_s`` seconds (those
        of a control plane killed mid-upload). Returns how many were removed."""
        removed = 0
        cutoff = time.time() - older_than_s
        try:
            entries = list(os.scandir(self.root / ".uploads"))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(
                        follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _vol(self, workspace_id: str, volume: str) -> Path:
        return self.root / workspace_id / volume

    def _file(self, workspace_id: str, volume: str, path: str) -> Path:
        base = self._vol(workspace_id, volume)
        target = base / path if path else base
        # A link inside a volume (made by a pod) may point anywhere: check the real path.
        real = target.resolve()
        if not real.is_relative_to(base.resolve()):
            raise InvalidRequest(f"path {path!r} leaves the volume", param="path")
        return target

    def create(self, workspace_id: str, volume: str) -> None:
        self._vol(workspace_id, volume).mkdir(parents=True, exist_ok=True)

    def delete(self, workspace_id: str, volume: str) -> None:
        shutil.rmtree(self._vol(workspace_id, volume), ignore_errors=True)

    async def write(
        self, workspace_id: str, volume: str, path: str, chunks: AsyncIterator[bytes],
        *, max_bytes: int,
    ) -> int:
        target = self._file(workspace_id, volume, path)
        if target.is_dir():
            raise Conflict(f"{path!r} is a folder", param="path")
        vol = self._vol(workspace_id, volume)
        for parent in target.relative_to(vol).parents:
            if parent != Path(".") and (vol / parent).is_file():
                raise Conflict(f"{parent.as_posix()!r} is a file, so {path!r} cannot be "
                               "written under it", param="path")
        if not vol.is_dir():
            raise NotFound(f"volume {volume!r} not found", param="name")
        tmp_dir = self.root / ".uploads"
        tmp = tmp_dir / uuid.uuid4().hex
        size = 0
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            async with await anyio.open_file(tmp, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"file is larger than the limit of {max_bytes} bytes", param="body"
                        )
                    await f.write(chunk)
            self._make_parents(vol, target.relative_to(vol).parent, volume)
            os.replace(tmp, target)
        except FileNotFoundError as e:
            # The volume's folder went away meanwhile (deleted during the upload).
            raise NotFound(f"volume {volume!r} not found", param="name") from e
        except OSError as e:
            if e.errno in FULL:
                raise storage_full(volume) from e
            if e.errno == errno.EFBIG:
                raise PayloadTooLarge("file is larger than the storage can hold",
                                      param="body") from e
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return size

    @staticmethod
    def _make_parents(vol: Path, rel: Path, volume: str) -> None:
        """Make the folders ``rel`` under ``vol`` one at a time, never ``vol`` itself:
        an upload that outlived its volume must not bring its folder back."""
        here = vol
        for part in rel.parts:
            here = here / part
            try:
                here.mkdir()
            except FileExistsError:
                if not here.is_dir():
                    raise Conflict(f"{(here.relative_to(vol)).as_posix()!r} is a file",
                                   param="path") from None

    def read(self, workspace_id: str, volume: str, path: str,
             chunk_bytes: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        target = self._file(workspace_id, volume, path)
        if not target.is_file():
            raise NotFound(f"file {path!r} not found in volume {volume!r}", param="path")
        size = target.stat().st_size

        def chunks() -> Iterator[bytes]:
            """Exactly ``size`` bytes (the ``Content-Length`` sent): a file a workload
            still appends to sent more than its declared length, which broke the response
            mid-stream; one truncated meanwhile ends early (the client sees a short body)."""
            left = size
            with open(target, "rb") as f:
                while left > 0 and (block := f.read(min(chunk_bytes, left))):
                    left -= len(block)
                    yield block

        return size, chunks()

    def list(self, workspace_id: str, volume: str, prefix: str = "") -> list[FileEntry]:
        base = self._vol(workspace_id, volume)
        start = self._file(workspace_id, volume, prefix)
        if not start.exists():
            if prefix:
                raise NotFound(f"{prefix!r} not found in volume {volume!r}", param="path")
            return []
        out: list[FileEntry] = []
        paths = [start] if start.is_file() else sorted(start.rglob("*"))
        for p in paths:
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            is_dir = p.is_dir() and not p.is_symlink()
            out.append(FileEntry(
                path=p.relative_to(base).as_posix(), size_bytes=0 if is_dir else st.st_size,
                is_dir=is_dir, modified_at=datetime.fromtimestamp(st.st_mtime, UTC),
            ))
        return out

    def remove(self, workspace_id: str, volume: str, path: str) -> None:
        """Remove the entry ``path`` itself. A link (a workload may make one pointing
        anywhere) is unlinked, never followed: only its folder must lie in the volume, so
        a link out of the volume can be removed, and what it points to is untouched."""
        base = self._vol(workspace_id, volume)
        link = base / path
        if path and link.is_symlink():
            parent = Path(path).parent.as_posix()
            self._file(workspace_id, volume, "" if parent == "." else parent)
            link.unlink()
            return
        target = self._file(workspace_id, volume, path)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        else:
            raise NotFound(f"{path!r} not found in volume {volume!r}", param="path")

    def measure(self, workspace_id: str, volume: str) -> tuple[int, int]:
        total = files = 0
        for dirpath, _dirs, names in os.walk(self._vol(workspace_id, volume)):
            for n in names:
                try:
                    st = os.lstat(os.path.join(dirpath, n))
                except FileNotFoundError:
                    continue
                total += st.st_size
                files += 1
        return total, files

    def local_path(self, workspace_id: str, volume: str) -> Path | None:
        return self._vol(workspace_id, volume)
