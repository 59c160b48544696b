"""Volume storage: where the files of workspace volumes live.

:class:`VolumeStore` is the interface; :class:`LocalVolumeStore` keeps each volume in a
folder of this machine. A shared file system (NFS, Lustre) is the same class rooted on the
shared mount; an object store implements the same methods over keys ``<volume>/<path>``.
"""

from __future__ import annotations

from neocloud.server.storage.base import FileEntry, VolumeStore, clean_path
from neocloud.server.storage.local import LocalVolumeStore

__all__ = ["FileEntry", "LocalVolumeStore", "VolumeStore", "clean_path"]
