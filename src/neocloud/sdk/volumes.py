"""``client.volumes``: workspace storage and its files, streamed both ways."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

from neocloud.errors import InvalidRequest, Timeout, Unavailable, UpstreamError
from neocloud.models.volumes import VolumeCreate, VolumeFile, VolumeFilePage, VolumeOut
from neocloud.sdk._http import HttpApi, build, parse

VolumeList = list[VolumeOut]
FileList = list[VolumeFile]
#: ``progress(done_bytes, total_bytes)`` after every chunk.
Progress = Callable[[int, int], None]
#: Bytes read or written per chunk of a transfer (1 MiB).
CHUNK = 1 << 20
#: Entries asked for per page when :meth:`Volumes.files` follows a listing (the server's
#: most per page).
FILES_PAGE_SIZE = 1000


class Volumes:
    """Create, fill, read and delete volumes of the token's workspace."""

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def create(self, name: str) -> VolumeOut:
        """Create an empty volume. Raises ``AlreadyExists``, ``ValidationFailed``."""
        return self._api.send_model("POST", VolumeOut, "/volumes", build(VolumeCreate, name=name))

    def get(self, name: str) -> VolumeOut:
        """The volume with its size in bytes measured now. Raises ``NotFound``."""
        return self._api.get_model(VolumeOut, _path(name))

    def list(self) -> VolumeList:
        return self._api.get_list(VolumeOut, "/volumes")

    def delete(self, name: str) -> None:
        """Delete the volume and its files. Raises ``Conflict`` while a job or pod uses it."""
        self._api.request("DELETE", _path(name))

    def files_page(self, name: str, path: str = "", *, limit: int | None = None,
                   after: str | None = None) -> VolumeFilePage:
        """One page of the files and folders under ``path``: at most ``limit`` (the
        server's default is 100, its most 1000), those after the path ``after``. While
        the page's ``has_more`` is true, the next page is ``after=page.next_after``.

        Raises:
            NotFound: no such volume, or nothing at ``path``.
            InvalidRequest: a bad ``path`` or ``after`` (``param`` names it).
            ValidationFailed: ``limit`` out of range.
        """
        return self._api.get_model(VolumeFilePage, _path(name) + "/files",
                                   params={"path": path, "limit": limit, "after": after})

    def iter_files(self, name: str, path: str = "", *,
                   page_size: int = FILES_PAGE_SIZE) -> Iterator[VolumeFile]:
        """Every file and folder under ``path`` in path order, fetched ``page_size`` at a
        time as they are read (see :meth:`files_page`).

        Raises:
            UpstreamError: the server said more entries follow but gave no next path.
            The errors of :meth:`files_page`.
        """
        after: str | None = None
        while True:
            page = self.files_page(name, path, limit=page_size, after=after)
            yield from page.data
            if not page.has_more:
                return
            if not page.next_after or page.next_after == after:
                raise UpstreamError("the volume listing did not move on to a next page")
            after = page.next_after

    def files(self, name: str, path: str = "", *,
              page_size: int = FILES_PAGE_SIZE) -> FileList:
        """Every file and folder under ``path`` (the whole volume by default), in path
        order, following the listing page by page (see :meth:`iter_files`)."""
        return list(self.iter_files(name, path, page_size=page_size))

    def remove(self, name: str, path: str) -> None:
        """Remove a file or a folder with its contents. Raises ``NotFound``."""
        self._api.request("DELETE", _file(name, path))

    def upload(self, name: str, local: str | os.PathLike[str], path: str | None = None, *,
               progress: Progress | None = None) -> VolumeFile:
        """Upload one local file to ``path`` (default: its file name), streamed in 1 MiB
        chunks (never read whole into memory).

        Raises:
            InvalidRequest: ``local`` is not a file. NotFound: no such volume.
            PayloadTooLarge: the file is over the control plane's limit.
        """
        src = Path(local)
        if not src.is_file():
            raise InvalidRequest(f"{src} is not a file", param="local")
        total = src.stat().st_size

        def chunks() -> Iterator[bytes]:
            done = 0
            with open(src, "rb") as f:
                while block := f.read(CHUNK):
                    done += len(block)
                    yield block
                    if progress is not None:
                        progress(done, total)

        headers = {"Content-Length": str(total), "Content-Type": "application/octet-stream"}
        response = self._send("PUT", _file(name, path or src.name), content=chunks(),
                              headers=headers)
        if progress is not None and total == 0:
            progress(0, 0)
        return parse(VolumeFile, response)

    def download(self, name: str, path: str, local: str | os.PathLike[str], *,
                 progress: Progress | None = None) -> Path:
        """Download the file ``path`` to ``local`` (a file, or an existing folder to put it
        in), streamed; the file appears complete or not at all. Returns the local path."""
        dest = Path(local)
        if dest.is_dir():
            dest = dest / path.rstrip("/").rsplit("/", 1)[-1]
        tmp = dest.with_name(f".{dest.name}.part")
        with self._stream("GET", _file(name, path)) as response:
            total = int(response.headers.get("content-length") or 0)
            done = 0
            try:
                with open(tmp, "wb") as f:
                    for block in response.iter_bytes(CHUNK):
                        f.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        return dest

    # -- streaming transport ----------------------------------------------------------
    def _send(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            response = self._api._client.request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.TimeoutException as exc:
            raise Timeout(f"{method} {path} timed out") from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"connection to the control plane failed: {exc}",
                              code="unreachable") from exc
        if not response.is_success:
            raise self._api._error(response)
        return response

    def _stream(self, method: str, path: str) -> _Stream:
        return _Stream(self._api, method, path)


class _Stream:
    """``with`` block over a streamed response; raises the server's error on non-2xx."""

    def __init__(self, api: HttpApi, method: str, path: str):
        self._ctx = api._client.stream(method, path)
        self._api = api

    def __enter__(self) -> httpx.Response:
        try:
            response = self._ctx.__enter__()
        except httpx.TransportError as exc:
            raise Unavailable(f"connection to the control plane failed: {exc}",
                              code="unreachable") from exc
        if not response.is_success:
            response.read()
            self._ctx.__exit__(None, None, None)
            raise self._api._error(response)
        return response

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)  # type: ignore[arg-type]


def _path(name: str) -> str:
    return f"/volumes/{quote(name, safe='')}"


def _file(name: str, path: str) -> str:
    """The URL path of file ``path`` of volume ``name``. ``.`` and ``..`` segments are sent
    percent-encoded: as literals, URL normalisation would drop them (``data/../../x``
    would name another route), while encoded they reach the control plane, which refuses
    a path leaving the volume with an error naming it."""
    parts = [quote(p, safe="") if p not in (".", "..") else p.replace(".", "%2E")
             for p in path.lstrip("/").split("/")]
    return f"{_path(name)}/files/{'/'.join(parts)}"
