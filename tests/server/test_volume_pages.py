"""Volume file listings page by page: ``limit`` (default 100, at most 1000, as every list
route) and ``after`` (a path: the previous page's ``next_after``), on both databases."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from neocloud.server.db.tables import Volume
from tests.server.helpers import Cloud
from tests.server.workload_helpers import error_of, get


def _fill(cloud: Cloud, names: list[str]) -> Path:
    """Create volume ``v`` holding the files ``names`` (written straight into its folder:
    the listing is under test, not the upload)."""
    r = cloud.api("POST", "/volumes", json={"name": "v"})
    assert r.status_code == 201, r.text
    with cloud.app.state.db.session() as s:
        ws = s.scalars(select(Volume.workspace_id).where(Volume.name == "v")).one()
    folder = cloud.app.state.volume_store.local_path(ws, "v")
    assert folder is not None
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        (folder / n).write_bytes(b"x" * len(n))
    return folder


def _all_pages(cloud: Cloud, query: str = "", limit: int | None = None) -> list[list[str]]:
    pages: list[list[str]] = []
    after = None
    while True:
        q = [query] if query else []
        if limit is not None:
            q.append(f"limit={limit}")
        if after is not None:
            q.append(f"after={after}")
        page = get(cloud, "/volumes/v/files" + ("?" + "&".join(q) if q else ""))
        pages.append([f["path"] for f in page["data"]])
        assert page["object"] == "list"
        if not page["has_more"]:
            assert page["next_after"] is None
            return pages
        assert page["next_after"] == pages[-1][-1]
        after = page["next_after"]


def test_default_page_is_100_and_pages_cover_everything_once(cloud: Cloud) -> None:
    names = [f"f{i:03d}.txt" for i in range(250)]
    _fill(cloud, names)
    first = get(cloud, "/volumes/v/files")
    assert len(first["data"]) == 100 and first["has_more"] is True
    assert first["next_after"] == "f099.txt"
    pages = _all_pages(cloud)
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [p for page in pages for p in page] == names
    assert [len(p) for p in _all_pages(cloud, limit=1000)] == [250]
    assert [len(p) for p in _all_pages(cloud, limit=125)] == [125, 125]  # last one is full


def test_after_follows_path_order_part_by_part(cloud: Cloud) -> None:
    # '-' sorts before '/' in a string, but a folder's entries follow it at once.
    _fill(cloud, ["a/b", "a-c", "a/z/deep", "b"])
    pages = _all_pages(cloud, limit=2)
    flat = [p for page in pages for p in page]
    assert flat == ["a", "a/b", "a/z", "a/z/deep", "a-c", "b"]
    assert pages == [["a", "a/b"], ["a/z", "a/z/deep"], ["a-c", "b"]]
    # Under a folder, and after a path that no longer exists (removed between pages).
    assert _all_pages(cloud, "path=a", limit=1) == [["a/b"], ["a/z"], ["a/z/deep"]]
    assert [f["path"] for f in get(cloud, "/volumes/v/files?after=a/y")["data"]] == [
        "a/z", "a/z/deep", "a-c", "b"]
    # An after past the end: an empty last page.
    page = get(cloud, "/volumes/v/files?after=zzz")
    assert page["data"] == [] and page["has_more"] is False and page["next_after"] is None


def test_bad_limit_and_after_name_the_field(cloud: Cloud) -> None:
    _fill(cloud, ["a"])
    for bad in ("0", "1001", "-1", "ten"):
        r = cloud.api("GET", f"/volumes/v/files?limit={bad}")
        assert r.status_code == 422, (bad, r.text)
        assert error_of(r)["param"] == "query.limit", bad  # as /events, /audit name it
    for bad in ("..", "a/../b", "x" * 256):
        r = cloud.api("GET", "/volumes/v/files", params={"after": bad})
        assert r.status_code == 400, (bad, r.text)
        err = error_of(r)
        assert err["param"] == "after" and err["code"] == "invalid_request", bad
    r = cloud.api("GET", "/volumes/v/files", params={"after": "a\x00b"})
    assert r.status_code == 400 and error_of(r)["param"] == "after"
    # The schema states the rules.
    spec = cloud.client.get("/openapi.json").json()
    params = {p["name"]: p for p in spec["paths"]["/api/v1/volumes/{name}/files"]["get"]
              ["parameters"]}
    assert params["limit"]["schema"]["minimum"] == 1
    assert params["limit"]["schema"]["maximum"] == 1000
    assert params["limit"]["schema"]["default"] == 100
    assert "not" in params["after"]["schema"]
