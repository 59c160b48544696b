"""Volumes of the caller's workspace and their files (streamed both ways)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from neocloud.models import Page, Role
from neocloud.models.volumes import VolumeCreate, VolumeFile, VolumeFilePage, VolumeOut
from neocloud.server.deps import CallerDep, SessionDep, StateDep, VolumeStoreDep
from neocloud.server.errors_http import error_responses
from neocloud.server.services import volumes as svc
from neocloud.server.storage import clean_path

router = APIRouter(tags=["volumes"])

#: Volume paths as the OpenAPI schema states them: ``/``-separated parts of at most 255
#: characters (the server counts 255 bytes), no NUL, at most 64 parts and 1024 bytes; a
#: file path names at least one part, a folder to list may be the root (``""``).
#: (Stated, not enforced here: the service's check answers 400 naming ``path``.)
FOLDER_SCHEMA = {"pattern": r"^[^\x00/]{0,255}(/[^\x00/]{0,255}){0,63}$", "maxLength": 1024}
FILE_SCHEMA = {"pattern": r"^[^\x00/]{1,255}(/[^\x00/]{1,255})*$", "maxLength": 1024}
FilePath = Annotated[str, Path(description="File path in the volume.",
                               json_schema_extra=FILE_SCHEMA)]
#: A listing's ``after``: a path as above (``""``: from the start), with no ``..`` part
#: (stated here; the service's check answers 400 naming ``after``).
AFTER_SCHEMA = {**FOLDER_SCHEMA, "not": {"pattern": r"(^|/)\.\.(/|$)"}}

#: Path prefix of uploads, which the control plane lets past its request-body limit.
UPLOAD_PREFIX = "/api/v1/volumes/"


def is_upload(method: str, path: str) -> bool:
    """Whether a request is a file upload (``PUT /api/v1/volumes/{name}/files/...``)."""
    return method == "PUT" and path.startswith(UPLOAD_PREFIX) and "/files/" in path


@router.post("/volumes", response_model=VolumeOut, status_code=201)
def create_volume(body: VolumeCreate, caller: CallerDep, s: SessionDep,
                  store: VolumeStoreDep) -> VolumeOut:
    caller.require(Role.member)
    vol = svc.create_volume(s, workspace_id=caller.workspace_id, name=body.name,
                            store=store)
    return svc.volume_out(s, vol)


@router.get("/volumes", response_model=Page[VolumeOut])
def list_volumes(caller: CallerDep, s: SessionDep) -> Page[VolumeOut]:
    return Page(data=[svc.volume_out(s, v) for v in svc.list_volumes(
        s, workspace_id=caller.workspace_id)])


@router.get("/volumes/{name}", response_model=VolumeOut)
def get_volume(name: str, caller: CallerDep, s: SessionDep, store: VolumeStoreDep) -> VolumeOut:
    """The volume, with its size measured now."""
    vol = svc.get_volume(s, workspace_id=caller.workspace_id, name=name)
    svc.measure(vol, store)
    return svc.volume_out(s, vol)


@router.delete("/volumes/{name}", status_code=204)
def delete_volume(name: str, caller: CallerDep, s: SessionDep,
                  store: VolumeStoreDep) -> Response:
    caller.require(Role.member)
    svc.delete_volume(s, workspace_id=caller.workspace_id, name=name, store=store)
    return Response(status_code=204)


@router.get("/volumes/{name}/files", response_model=VolumeFilePage)
def list_files(
    name: str, caller: CallerDep, s: SessionDep, store: VolumeStoreDep,
    path: str = Query("", max_length=4096, json_schema_extra=FOLDER_SCHEMA),
    limit: int = Query(svc.FILES_PAGE_DEFAULT, ge=1, le=svc.FILES_PAGE_MAX,
                       description="At most this many entries (default 100, at most 1000)."),
    after: str = Query("", max_length=4096, json_schema_extra=AFTER_SCHEMA,
                       description="Continue after this path: the ``next_after`` of the "
                       "previous page (default: from the start)."),
) -> VolumeFilePage:
    """The files and folders under ``path`` (the whole volume by default), in path order,
    one page at a time: while ``has_more``, ask again with ``after=next_after``. A bad
    ``path`` or ``after`` answers 400 naming it."""
    svc.get_volume(s, workspace_id=caller.workspace_id, name=name)
    entries, more = svc.list_files(store, workspace_id=caller.workspace_id, name=name,
                                   path=path, after=after, limit=limit)
    data = [VolumeFile(path=e.path, size_bytes=e.size_bytes, is_dir=e.is_dir,
                       modified_at=e.modified_at) for e in entries]
    return VolumeFilePage(data=data, has_more=more,
                          next_after=data[-1].path if more and data else None)


@router.put("/volumes/{name}/files/{path:path}", response_model=VolumeFile, status_code=201,
            responses=error_responses(507))
async def upload_file(name: str, path: FilePath, request: Request, caller: CallerDep,
                      state: StateDep, store: VolumeStoreDep) -> VolumeFile:
    """Store the request body as the file ``path`` (streamed; replaces an existing file
    once complete). A full disk answers 507 ``insufficient_storage`` and stores nothing."""
    caller.require(Role.member)
    rel = clean_path(path)

    def check() -> None:
        with state.db.session() as s:
            svc.get_volume(s, workspace_id=caller.workspace_id, name=name)
        # The volume exists: its folder too (made again if the operator removed it). The
        # store makes no volume folder itself, so an upload that outlives its volume
        # (deleted meanwhile) fails instead of bringing the folder back.
        store.create(caller.workspace_id, name)

    await run_in_threadpool(check)
    await store.write(caller.workspace_id, name, rel, request.stream(),
                      max_bytes=state.settings.volume_max_file_bytes)

    def remeasure() -> VolumeFile:
        with state.db.session() as s:
            vol = svc.get_volume(s, workspace_id=caller.workspace_id, name=name)
            svc.measure(vol, store)
        entry = store.list(caller.workspace_id, name, rel)[0]
        return VolumeFile(path=entry.path, size_bytes=entry.size_bytes, is_dir=False,
                          modified_at=entry.modified_at)

    return await run_in_threadpool(remeasure)


@router.get("/volumes/{name}/files/{path:path}", response_class=StreamingResponse)
def download_file(name: str, path: FilePath, caller: CallerDep, s: SessionDep,
                  store: VolumeStoreDep) -> StreamingResponse:
    """The file's bytes, streamed, with its ``Content-Length``."""
    svc.get_volume(s, workspace_id=caller.workspace_id, name=name)
    size, chunks = store.read(caller.workspace_id, name, clean_path(path))
    filename = quote(path.rsplit("/", 1)[-1])
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={
        "Content-Length": str(size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{filename}"})


@router.delete("/volumes/{name}/files/{path:path}", status_code=204)
def delete_file(name: str, path: FilePath, caller: CallerDep, s: SessionDep,
                store: VolumeStoreDep) -> Response:
    caller.require(Role.member)
    vol = svc.get_volume(s, workspace_id=caller.workspace_id, name=name)
    store.remove(caller.workspace_id, name, clean_path(path))
    svc.measure(vol, store)
    return Response(status_code=204)
