"""Volume files under faults: a full disk, a volume deleted during an upload, uploads a
crash left behind, and a volume re-created over a folder a delete could not remove.

Found:

- an upload on a full disk (``ENOSPC`` from the write) answered 500 "internal error"; now
  507 ``insufficient_storage`` naming ``body``, with the partial upload removed and the
  file it was to replace intact;
- an upload that outlived its volume (``DELETE /volumes/x`` while the body streamed)
  made the volume's folder again (``mkdir(parents=True)``) and left the file there,
  outside any volume row;
- partial uploads of a control plane killed mid-upload stayed in ``.uploads/`` forever;
- a volume created under the name of a deleted one showed the old files when the
  delete's removal had failed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from neocloud.errors import NotFound
from neocloud.server.services import volumes as volume_svc
from neocloud.server.storage import LocalVolumeStore
from neocloud.server.storage import local as local_store
from tests.server.helpers import Cloud

WS = "ws1"


def _store(cloud: Cloud) -> LocalVolumeStore:
    store = cloud.app.state.volume_store
    assert isinstance(store, LocalVolumeStore)
    return store


def _workspace_id(cloud: Cloud) -> str:
    return str(cloud.api("GET", "/whoami").json()["workspace"]["id"])


class _FullDisk:
    """An ``anyio`` async file whose writes fail with ``ENOSPC`` once ``room`` bytes are
    written (what a full disk or spent quota answers)."""

    def __init__(self, real: Any, room: int, code: int):
        self.real, self.room, self.code = real, room, code

    async def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return int(await self.real.write(data))

    async def __aenter__(self) -> _FullDisk:
        await self.real.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.real.__aexit__(*exc)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_upload_is_507_and_keeps_the_old_file(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    assert cloud.api("POST", "/volumes", json={"name": "data"}).status_code == 201
    r = cloud.api("PUT", "/volumes/data/files/model.bin", content=b"old contents")
    assert r.status_code == 201, r.text
    real_open = local_store.anyio.open_file

    async def full_open(path: Any, mode: str = "r", *a: Any, **kw: Any) -> _FullDisk:
        return _FullDisk(await real_open(path, mode, *a, **kw), room=1 << 16, code=code)

    monkeypatch.setattr(local_store.anyio, "open_file", full_open)
    r = cloud.api("PUT", "/volumes/data/files/model.bin", content=b"x" * (1 << 20))
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_storage" and err["param"] == "body", err
    assert "Traceback" not in r.text and "/" + ".uploads" not in r.text
    monkeypatch.undo()
    assert cloud.api("GET", "/volumes/data/files/model.bin").content == b"old contents"
    uploads = _store(cloud).root / ".uploads"
    assert not uploads.exists() or not any(uploads.iterdir()), list(uploads.iterdir())


def test_upload_outliving_its_volume_does_not_bring_it_back(tmp_path: Path) -> None:
    """The volume's folder is removed while the body streams (a concurrent delete)."""
    store = LocalVolumeStore(tmp_path / "volumes")
    store.create(WS, "data")

    async def body() -> AsyncIterator[bytes]:
        yield b"first half "
        store.delete(WS, "data")
        yield b"second half"

    async def upload() -> None:
        await store.write(WS, "data", "sub/dir/file.txt", body(), max_bytes=1 << 20)

    with pytest.raises(NotFound) as info:
        asyncio.run(upload())
    assert info.value.param == "name"
    assert not (tmp_path / "volumes" / WS / "data").exists()
    assert not any((tmp_path / "volumes" / ".uploads").iterdir())


def test_upload_route_when_the_volume_is_deleted_meanwhile(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PUT`` racing ``DELETE /volumes/data``: 404, and no folder of the volume stays."""
    assert cloud.api("POST", "/volumes", json={"name": "data"}).status_code == 201
    store = _store(cloud)
    ws = _workspace_id(cloud)
    real_write = LocalVolumeStore.write

    async def racing_write(self: LocalVolumeStore, workspace_id: str, volume: str,
                           path: str, chunks: AsyncIterator[bytes], **kw: Any) -> int:
        def delete() -> None:  # what DELETE /volumes/data does, in its own transaction
            with cloud.app.state.db.session() as s:
                volume_svc.delete_volume(s, workspace_id=workspace_id, name=volume,
                                         store=self)
        await asyncio.to_thread(delete)
        return await real_write(self, workspace_id, volume, path, chunks, **kw)

    monkeypatch.setattr(LocalVolumeStore, "write", racing_write)
    r = cloud.api("PUT", "/volumes/data/files/a/b.txt", content=b"payload")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["param"] == "name"
    assert not (store.root / ws / "data").exists()


def test_stale_partial_uploads_are_removed_when_the_store_opens(tmp_path: Path) -> None:
    root = tmp_path / "volumes"
    uploads = root / ".uploads"
    uploads.mkdir(parents=True)
    stale, live = uploads / "left-by-a-crash", uploads / "being-written"
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    old = time.time() - local_store.STALE_UPLOAD_S - 60
    os.utime(stale, (old, old))
    LocalVolumeStore(root)
    assert not stale.exists()
    assert live.exists()


def test_new_volume_does_not_show_a_deleted_ones_files(cloud: Cloud) -> None:
    assert cloud.api("POST", "/volumes", json={"name": "data"}).status_code == 201
    assert cloud.api("PUT", "/volumes/data/files/old.txt", content=b"1").status_code == 201
    folder = _store(cloud).root / _workspace_id(cloud) / "data"
    leftover = folder.parent / "kept-aside"
    folder.rename(leftover)  # a delete whose removal failed: the files stay on disk
    assert cloud.api("DELETE", "/volumes/data").status_code == 204
    leftover.rename(folder)
    assert cloud.api("POST", "/volumes", json={"name": "data"}).status_code == 201
    files = cloud.api("GET", "/volumes/data/files").json()["data"]
    assert files == [], files


def test_a_link_out_of_the_volume_can_be_removed(cloud: Cloud, tmp_path: Path) -> None:
    """A workload made ``escape -> <outside folder>`` in its volume: ``DELETE`` of the link
    answered 400 "leaves the volume", so it could never be removed through the API."""
    assert cloud.api("POST", "/volumes", json={"name": "data"}).status_code == 201
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    folder = _store(cloud).root / _workspace_id(cloud) / "data"
    (folder / "sub").mkdir()
    (folder / "escape").symlink_to(outside, target_is_directory=True)
    (folder / "sub" / "dangling").symlink_to(tmp_path / "nothing-here")
    assert cloud.api("GET", "/volumes/data/files/escape/precious.txt").status_code == 400
    for link in ("escape", "sub/dangling"):
        r = cloud.api("DELETE", f"/volumes/data/files/{link}")
        assert r.status_code == 204, (link, r.text)
    assert not (folder / "escape").is_symlink() and not (folder / "sub" / "dangling").is_symlink()
    assert (outside / "precious.txt").read_text() == "keep me"


def test_download_of_a_growing_file_sends_its_declared_length(tmp_path: Path) -> None:
    """A job appends to a file while it is downloaded: the body once ran past the
    ``Content-Length`` taken at the start (the server then broke the connection)."""
    store = LocalVolumeStore(tmp_path / "volumes")
    store.create(WS, "data")
    path = store.local_path(WS, "data")
    assert path is not None
    (path / "train.log").write_bytes(b"a" * 5000)
    size, chunks = store.read(WS, "data", "train.log", chunk_bytes=1024)
    first = next(chunks)
    with (path / "train.log").open("ab") as f:
        f.write(b"b" * 5000)  # written while the download runs
    body = first + b"".join(chunks)
    assert size == 5000 and body == b"a" * 5000


def _failing_commit_after(monkeypatch: pytest.MonkeyPatch, module: Any, fn: str) -> None:
    """The commit of the transaction that ran ``module.fn`` fails as on a full database
    disk (``SQLITE_FULL``); every other commit goes through."""
    import sqlite3

    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    real_fn, real_commit = getattr(module, fn), Session.commit

    def marked(s: Session, *a: Any, **kw: Any) -> Any:
        s.info["fail_commit"] = True
        return real_fn(s, *a, **kw)

    def commit(self: Session) -> None:
        if self.info.pop("fail_commit", False):
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError(
                "database or disk is full"))
        real_commit(self)

    monkeypatch.setattr(module, fn, marked)
    monkeypatch.setattr(Session, "commit", commit)


def test_failed_delete_commit_keeps_the_volume_and_its_files(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files were removed before the deletion was committed: a commit that then
    failed answered an error, kept the row, and had lost every file."""
    assert cloud.api("POST", "/volumes", json={"name": "data"}).status_code == 201
    assert cloud.api("PUT", "/volumes/data/files/w.bin", content=b"weights").status_code == 201
    with monkeypatch.context() as m:
        _failing_commit_after(m, volume_svc, "delete_volume")
        r = cloud.api("DELETE", "/volumes/data")
    assert r.status_code == 507, r.text
    assert cloud.api("GET", "/volumes/data/files/w.bin").content == b"weights"
    assert cloud.api("DELETE", "/volumes/data").status_code == 204  # a retry works
    folder = _store(cloud).root / _workspace_id(cloud) / "data"
    assert not folder.exists()


def test_upload_to_a_volume_whose_folder_the_operator_removed(cloud: Cloud) -> None:
    """The row is there, the folder is not (removed by hand, a restored backup without
    it): the upload makes the folder again rather than answering 404 for a listed
    volume."""
    assert cloud.api("POST", "/volumes", json={"name": "data"}).status_code == 201
    folder = _store(cloud).root / _workspace_id(cloud) / "data"
    folder.rmdir()
    r = cloud.api("PUT", "/volumes/data/files/a/b.txt", content=b"back")
    assert r.status_code == 201, r.text
    assert cloud.api("GET", "/volumes/data/files/a/b.txt").content == b"back"
