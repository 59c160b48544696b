"""The volume storage interface."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Protocol

from neocloud.errors import InvalidRequest


@dataclass(frozen=True)
class FileEntry:
    """A file or folder of a volume; ``path`` relative to the volume root, sizes in bytes."""

    path: str
    size_bytes: int
    is_dir: bool
    modified_at: datetime


#: Limits of a volume path (Linux's PATH_MAX is 4,096 bytes for the whole path).
MAX_DEPTH = 64
MAX_PATH_BYTES = 1024


def clean_path(path: str, *, param: str = "path", allow_root: bool = False) -> str:
    """A volume path normalised to ``a/b/c`` (no leading ``/``, no ``.`` parts).

    Raises:
        InvalidRequest: the path is empty (unless ``allow_root``), has ``..`` parts, NUL
            bytes or parts longer than 255 bytes.
    """
    if "\x00" in path:
        raise InvalidRequest("path may not contain NUL bytes", param=param)
    parts = [p for p in PurePosixPath("/" + path).parts[1:] if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidRequest(f"path {path!r} may not contain '..'", param=param)
    if any(len(p.encode()) > 255 for p in parts):
        raise InvalidRequest("a path part is longer than 255 bytes", param=param)
    if len(parts) > MAX_DEPTH or len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidRequest(f"path is deeper than {MAX_DEPTH} folders or longer than "
                             f"{MAX_PATH_BYTES} bytes", param=param)
    if not parts and not allow_root:
        raise InvalidRequest("path must name a file", param=param)
    return "/".join(parts)


class VolumeStore(Protocol):
    """Files of volumes, addressed by ``(workspace_id, volume name, path)``.

    Paths are cleaned with :func:`clean_path` by the caller. Every method raises
    ``NotFound`` (param ``path``) for a missing file and ``InvalidRequest`` for a path
    that leaves the volume.
    """

    def create(self, workspace_id: str, volume: str) -> None:
        """Make an empty volume (idempotent)."""
        ...

    def delete(self, workspace_id: str, volume: str) -> None:
        """Remove a volume and every file in it (idempotent)."""
        ...

    async def write(
        self, workspace_id: str, volume: str, path: str, chunks: AsyncIterator[bytes],
        *, max_bytes: int,
    ) -> int:
        """Store the stream as the file ``path`` (replacing it atomically once complete);
        returns its size in bytes. Raises ``PayloadTooLarge`` past ``max_bytes``."""
        ...

    def read(self, workspace_id: str, volume: str, path: str,
             chunk_bytes: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        """The size of the file and an iterator over its bytes."""
        ...

    def list(self, workspace_id: str, volume: str, prefix: str = "") -> list[FileEntry]:
        """Every file and folder under ``prefix`` (recursively), sorted by path."""
        ...

    def remove(self, workspace_id: str, volume: str, path: str) -> None:
        """Remove a file or a folder with its contents."""
        ...

    def measure(self, workspace_id: str, volume: str) -> tuple[int, int]:
        """``(bytes, files)`` the volume holds now."""
        ...

    def local_path(self, workspace_id: str, volume: str) -> Path | None:
        """The folder of the volume on this machine's file system, when there is one
        (mounts on the ``local`` backend); ``None`` for stores without one."""
        ...
