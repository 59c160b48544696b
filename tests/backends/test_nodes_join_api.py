"""``POST /api/v1/nodes/join``: operators register Ray nodes; joining again refreshes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import Cloud, open_cloud

RAY_ID = "ab" * 28


@pytest.fixture
def cloud(tmp_path: Path, db_url: str) -> Iterator[Cloud]:
    c, client = open_cloud(tmp_path / "home", db_url)
    try:
        yield c
    finally:
        client.__exit__(None, None, None)


def _body(**kw: object) -> dict[str, object]:
    return {"name": "gpu-a", "address": "10.0.0.7", "ray_node_id": RAY_ID,
            "cpu_milli": 32000, "memory_mib": 256000,
            "gpus": [{"type": "A10", "count": 2, "memory_mib": 23028}], **kw}


def test_join_registers_then_refreshes(cloud: Cloud) -> None:
    r = cloud.api("POST", "/nodes/join", json=_body(labels={"zone": "a"}, pool="east",
                                                      price_per_hour_usd=2.5))
    assert r.status_code == 201, r.text
    node = r.json()
    assert node["backend"] == "ray" and node["status"] == "ready" and node["pool"] == "east"
    assert [g["index"] for g in node["gpus"]] == [0, 1]
    assert node["labels"] == {"zone": "a", "ray.io/node-id": RAY_ID,
                              "neocloud.io/price-per-hour-usd": "2.5"}
    # The server restarts: its Ray node has a new id; the node keeps its id and pool.
    assert cloud.api("PATCH", "/nodes/gpu-a", json={"status": "not_ready"}).status_code == 200
    again = cloud.api("POST", "/nodes/join", json=_body(ray_node_id="cd" * 28))
    assert again.status_code == 200, again.text
    assert again.json()["id"] == node["id"] and again.json()["pool"] == "east"
    assert again.json()["status"] == "ready"
    assert again.json()["labels"]["ray.io/node-id"] == "cd" * 28


def test_join_needs_an_operator(cloud: Cloud) -> None:
    member = cloud.new_workspace("team-a", role="admin")
    r = cloud.api("POST", "/nodes/join", token=member, json=_body())
    assert r.status_code == 403, r.text
    r = cloud.api("POST", "/workspaces/default/tokens", json={"name": "m", "role": "member"})
    assert r.status_code == 201, r.text
    r = cloud.api("POST", "/nodes/join", token=r.json()["token"], json=_body())
    assert r.status_code == 403, r.text
    assert cloud.api("GET", "/nodes/gpu-a").status_code == 404


def test_join_bad_input_and_name_of_another_backend(cloud: Cloud) -> None:
    cloud.add_fake_node("sim-1")
    r = cloud.api("POST", "/nodes/join", json=_body(name="sim-1"))
    assert r.status_code == 409 and r.json()["error"]["param"] == "name", r.text
    r = cloud.api("POST", "/nodes/join", json=_body(ray_node_id="not-hex!"))
    assert r.status_code == 422 and "ray_node_id" in r.json()["error"]["param"], r.text
    r = cloud.api("POST", "/nodes/join", json=_body(
        gpus=[{"type": "A10", "count": 1, "memory_mib": 1},
              {"type": "H100", "count": 1, "memory_mib": 1}]))
    assert r.status_code == 422, r.text


def test_drain_is_a_status(cloud: Cloud) -> None:
    assert cloud.api("POST", "/nodes/join", json=_body()).status_code == 201
    r = cloud.api("PATCH", "/nodes/gpu-a", json={"status": "draining"})
    assert r.status_code == 200 and r.json()["status"] == "draining"
    again = cloud.api("POST", "/nodes/join", json=_body())
    assert again.json()["status"] == "draining"  # rejoining does not undo a drain


def test_shared_folder_check_is_read_back_at_the_same_path(cloud: Cloud,
                                                           tmp_path: Path) -> None:
    from neocloud.server.services.shared_fs import MARKER_TTL_S, check_marker, write_marker

    r = cloud.api("POST", "/nodes/join/check")
    assert r.status_code == 201, r.text
    check = r.json()
    path = Path(check["path"])
    assert path.parent.parent == tmp_path / "home" / "volumes"  # the volumes folder
    assert check_marker(check["path"], check["token"]) is None  # shared: this machine
    wrong = check_marker(check["path"], "0" * 32)
    assert wrong is not None and "not the control plane's file" in wrong
    missing = check_marker(str(tmp_path / "elsewhere" / ".join-checks" / "x.marker"),
                           check["token"])
    assert missing is not None and "is missing here" in missing
    assert "--no-shared-check" in missing and str(tmp_path / "elsewhere") in missing
    # stale markers go at the next check; fresh ones stay
    later = write_marker(path.parent.parent, now=path.stat().st_mtime + MARKER_TTL_S + 1)
    assert not path.exists() and later.path.exists()

    member = cloud.new_workspace("team-a", role="admin")
    r = cloud.api("POST", "/nodes/join/check", token=member)
    assert r.status_code == 403 and r.json()["error"]["type"], r.text
