"""Volumes: streamed upload past the request-body limit, download, listing, removal,
size accounting (volume and bill), path safety, mounts, deletion rules and tenancy."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import Cloud, open_cloud
from tests.server.workload_helpers import error_of, get, reconcile_workloads


@pytest.fixture
def small_body_cloud(tmp_path: Path, db_url: str) -> Iterator[Cloud]:
    """A cloud whose JSON request bodies are limited to 64 KiB."""
    c, client = open_cloud(tmp_path / "home", db_url, max_body_bytes=64 * 1024,
                           volume_max_file_bytes=4 * 1024 * 1024)
    try:
        yield c
    finally:
        client.__exit__(None, None, None)


def _chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_upload_download_list_remove_and_size(small_body_cloud: Cloud) -> None:
    cloud = small_body_cloud
    r = cloud.api("POST", "/volumes", json={"name": "data"})
    assert r.status_code == 201 and r.json()["size_bytes"] == 0
    blob = os.urandom(3 * 1024 * 1024 + 17)  # far over the JSON body limit, streamed
    r = cloud.api("PUT", "/volumes/data/files/models/weights.bin", content=_chunks(blob))
    assert r.status_code == 201, r.text
    assert r.json()["path"] == "models/weights.bin" and r.json()["size_bytes"] == len(blob)
    r = cloud.api("PUT", "/volumes/data/files/readme.txt", content=b"hello\n")
    assert r.status_code == 201

    with cloud.client.stream("GET", "/api/v1/volumes/data/files/models/weights.bin",
                             headers=cloud.h()) as resp:
        assert resp.status_code == 200
        assert int(resp.headers["content-length"]) == len(blob)
        digest = hashlib.sha256()
        for part in resp.iter_bytes():
            digest.update(part)
    assert digest.hexdigest() == hashlib.sha256(blob).hexdigest()

    files = get(cloud, "/volumes/data/files")["data"]
    assert [(f["path"], f["is_dir"]) for f in files] == [
        ("models", True), ("models/weights.bin", False), ("readme.txt", False)]
    assert [f["path"] for f in get(cloud, "/volumes/data/files?path=models")["data"]] == [
        "models/weights.bin"]
    vol = get(cloud, "/volumes/data")
    assert vol["size_bytes"] == len(blob) + 6 and vol["file_count"] == 2
    line = next(ln for ln in get(cloud, "/usage")["lines"] if ln["kind"] == "volume")
    assert line["name"] == "data" and line["storage_bytes"] == len(blob) + 6

    assert cloud.api("DELETE", "/volumes/data/files/models").status_code == 204
    assert get(cloud, "/volumes/data")["size_bytes"] == 6
    r = cloud.api("GET", "/volumes/data/files/models/weights.bin")
    assert r.status_code == 404 and error_of(r)["param"] == "path"
    assert cloud.api("DELETE", "/volumes/data").status_code == 204
    assert cloud.api("GET", "/volumes/data").status_code == 404


def test_upload_over_the_file_limit_leaves_nothing(small_body_cloud: Cloud) -> None:
    cloud = small_body_cloud
    cloud.api("POST", "/volumes", json={"name": "data"})
    r = cloud.api("PUT", "/volumes/data/files/big", content=_chunks(b"x" * (5 * 1024 * 1024)))
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"
    assert get(cloud, "/volumes/data/files")["data"] == []
    # Other JSON routes keep their body limit.
    r = cloud.api("PUT", "/secrets/x", json={"value": "y" * 70_000})
    assert r.status_code == 413


def test_paths_cannot_leave_the_volume(cloud: Cloud, tmp_path: Path) -> None:
    cloud.api("POST", "/volumes", json={"name": "data"})
    for path in ("..%2Fsecret.key", "a/..%2F..%2Fx"):
        r = cloud.api("PUT", f"/volumes/data/files/{path}", content=b"x")
        assert r.status_code == 400, (path, r.text)
        assert error_of(r)["param"] == "path"
    r = cloud.api("GET", "/volumes/data/files", params={"path": "../.."})
    assert r.status_code == 400
    folder = next((tmp_path / "home" / "volumes").glob("*/data"))
    (folder / "escape").symlink_to(tmp_path / "home")
    r = cloud.api("GET", "/volumes/data/files/escape/secret.key")
    assert r.status_code == 400 and "leaves the volume" in error_of(r)["message"]


def test_bad_names_and_duplicates(cloud: Cloud) -> None:
    r = cloud.api("POST", "/volumes", json={"name": "Bad Name"})
    assert r.status_code == 422 and error_of(r)["param"] == "name"
    assert cloud.api("POST", "/volumes", json={"name": "v"}).status_code == 201
    r = cloud.api("POST", "/volumes", json={"name": "v"})
    assert r.status_code == 409 and error_of(r)["param"] == "name"
    assert cloud.api("GET", "/volumes/nope/files").status_code == 404


def test_mounted_volume_cannot_be_deleted(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    cloud.api("POST", "/volumes", json={"name": "ckpt"})
    r = cloud.api("POST", "/jobs", json={"name": "train", "command": ["x"],
                                         "volumes": [{"volume": "ckpt", "path": "/ckpt"}]})
    assert r.status_code == 201, r.text
    reconcile_workloads(cloud)
    assert get(cloud, "/volumes/ckpt")["mounted_by"] == ["job/train"]
    r = cloud.api("DELETE", "/volumes/ckpt")
    assert r.status_code == 409 and "job/train" in error_of(r)["message"]
    cloud.api("POST", "/jobs/train/stop")
    reconcile_workloads(cloud)
    assert cloud.api("DELETE", "/volumes/ckpt").status_code == 204


def test_tenancy(cloud: Cloud) -> None:
    cloud.api("POST", "/volumes", json={"name": "private"})
    cloud.api("PUT", "/volumes/private/files/a.txt", content=b"mine")
    other = cloud.new_workspace("other")
    assert get(cloud, "/volumes", other)["data"] == []
    for method, path in (("GET", "/volumes/private"), ("GET", "/volumes/private/files"),
                         ("GET", "/volumes/private/files/a.txt"),
                         ("DELETE", "/volumes/private/files/a.txt"),
                         ("DELETE", "/volumes/private")):
        assert cloud.api(method, path, other).status_code == 404, (method, path)
    r = cloud.api("PUT", "/volumes/private/files/b.txt", other, content=b"x")
    assert r.status_code == 404
    r = cloud.api("POST", "/jobs", other, json={
        "name": "j", "command": ["x"], "volumes": [{"volume": "private", "path": "/d"}]})
    assert r.status_code == 404 and error_of(r)["param"] == "volumes.0.volume"
    # Its own volume of the same name is a different folder.
    cloud.api("POST", "/volumes", other, json={"name": "private"})
    assert get(cloud, "/volumes/private/files", other)["data"] == []
    assert cloud.api("GET", "/volumes/private/files/a.txt").content == b"mine"
