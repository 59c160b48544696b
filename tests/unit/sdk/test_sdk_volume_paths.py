"""File paths of volumes through the SDK: dot segments reach the control plane (which
refuses a path with `..` in it, naming it) instead of being folded away by URL
normalisation into another route."""

from __future__ import annotations

from pathlib import Path

import pytest

from neocloud import errors
from neocloud.sdk import Client


def test_dot_segments_are_refused_by_the_control_plane_naming_the_path(
        client: Client, tmp_path: Path) -> None:
    client.volumes.create("data")
    src = tmp_path / "a.txt"
    src.write_text("hello")
    client.volumes.upload("data", src, "dir/a.txt")
    for bad in ("../../etc/passwd", "dir/../../x", "./../a.txt"):
        with pytest.raises(errors.InvalidRequest) as exc:
            client.volumes.remove("data", bad)
        assert exc.value.param == "path" and bad in exc.value.message
        with pytest.raises(errors.InvalidRequest):
            client.volumes.download("data", bad, tmp_path / "out")
    # A harmless dot segment inside the volume is the server's to resolve, and names with
    # dots that are not dot segments are ordinary names.
    client.volumes.download("data", "dir/./a.txt", tmp_path / "b.txt")
    assert (tmp_path / "b.txt").read_text() == "hello"
    client.volumes.upload("data", src, "dir/..hidden")
    assert "dir/..hidden" in {f.path for f in client.volumes.files("data", "dir")}
