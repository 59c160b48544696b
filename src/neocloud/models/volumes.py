"""Volumes: workspace-scoped storage mounted into jobs and pods at a path."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import Field, field_validator

from neocloud.models.common import Name, OutModel, Page, WireModel

_BAD_PATH = re.compile(r"(^|/)\.\.(/|$)")


class VolumeCreate(WireModel):
    """Create an empty volume."""

    name: Name


class VolumeOut(OutModel):
    """A volume. ``size_bytes`` is the bytes of its files when last measured
    (``measured_at``); ``mounted_by`` names the live jobs and pods that use it
    (``job/NAME``, ``pod/NAME``)."""

    id: str
    name: str
    size_bytes: int
    file_count: int
    measured_at: datetime | None
    mounted_by: list[str] = Field(default_factory=list)
    created_at: datetime


class VolumeFile(OutModel):
    """One entry of a volume listing; ``path`` is relative to the volume root, ``/``
    separated; sizes in bytes; directories have ``is_dir`` and size 0."""

    path: str
    size_bytes: int
    is_dir: bool
    modified_at: datetime


class VolumeFilePage(Page[VolumeFile]):
    """One page of a volume listing, entries in path order (part by part: ``a/b`` before
    ``a-c``). ``has_more``: entries follow; ask again with ``after=next_after`` (the last
    entry's path) for them. ``next_after`` is ``None`` on the last page."""

    has_more: bool = False
    next_after: str | None = None


class VolumeMount(WireModel):
    """Mount ``volume`` (of the same workspace) at ``path`` inside a workload.

    ``path`` is absolute (``/data``) or relative to the working directory (``data``); it
    may not contain ``..``. On the ``local`` backend, where processes share this machine's
    file system, the mount is a link named by the path inside the workload's working
    directory (``/data`` -> ``./data``) and ``NEOCLOUD_VOLUME_<NAME>`` holds the real folder.
    """

    volume: Name
    path: str = Field(min_length=1, max_length=255, json_schema_extra={
        "pattern": "^[^\\u0000]*[^\\u0000/][^\\u0000]*$", "not": {"pattern": _BAD_PATH.pattern}})

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if _BAD_PATH.search(v) or "\x00" in v or v.strip("/") == "":
            raise ValueError("mount path must name a folder and may not contain '..'")
        return v
