"""Volumes as folders: ``<root>/<workspace id>/<volume name>/``.

Uploads are written to ``<root>/.uploads/`` first and moved into place once complete, so a
reader never sees half a file and a broken upload leaves nothing in the volume.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio

from neocloud.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from neocloud.server.storage.base import FileEntry


class LocalVolumeStore:
    """A :class:`~neocloud.server.storage.base.VolumeStore` on a local (or shared) folder."""

    def __init__(self, root: Path):
        self.root = root

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
        tmp_dir = self.root / ".uploads"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / uuid.uuid4().hex
        size = 0
        try:
            async with await anyio.open_file(tmp, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"file is larger than the limit of {max_bytes} bytes", param="body"
                        )
                    await f.write(chunk)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def read(self, workspace_id: str, volume: str, path: str,
             chunk_bytes: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        target = self._file(workspace_id, volume, path)
        if not target.is_file():
            raise NotFound(f"file {path!r} not found in volume {volume!r}", param="path")
        size = target.stat().st_size

        def chunks() -> Iterator[bytes]:
            with open(target, "rb") as f:
                while block := f.read(chunk_bytes):
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
