"""Volume uploads to paths the file system refuses answer 500 (FileExistsError when a
parent part is an existing file; RecursionError/ENAMETOOLONG for a very deep path) instead
of 400 naming ``path``."""

from __future__ import annotations

import pytest

from tests.server.helpers import Cloud


@pytest.mark.parametrize("path", ["a/b.txt/c", "/".join(["d"] * 2000)],
                         ids=["parent-is-a-file", "too-deep"])
def test_upload_to_impossible_path_is_400(cloud: Cloud, path: str) -> None:
    assert cloud.api("POST", "/volumes", json={"name": "v1"}).status_code == 201
    r = cloud.api("PUT", "/volumes/v1/files/a/b.txt", content=b"hello")
    assert r.status_code == 201, r.text
    r = cloud.api("PUT", f"/volumes/v1/files/{path}", content=b"x")
    assert r.status_code in (400, 409, 414, 422), r.text[:300]
    assert r.json()["error"]["param"] == "path"
