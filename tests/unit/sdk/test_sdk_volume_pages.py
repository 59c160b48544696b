"""The SDK and the CLI follow a volume listing page by page (the real control plane)."""

from __future__ import annotations

import json

import pytest
from tests.unit.sdk.realcloud import BASE, RealCloud
from typer.testing import CliRunner

from neocloud.cli.context import CliState
from neocloud.cli.main import app as cli_app
from neocloud.errors import InvalidRequest, ValidationFailed
from neocloud.sdk import Client
from neocloud.server.db.tables import Volume

NAMES = [f"d{i % 3}/f{i:04d}" for i in range(1205)]


def _fill(cloud: RealCloud, client: Client) -> list[str]:
    """Volume ``v`` with :data:`NAMES` (written into its folder); every path, sorted."""
    vol = client.volumes.create("v")
    with cloud.app.state.db.session() as s:
        row = s.get(Volume, vol.id)
        assert row is not None
        ws = row.workspace_id
    folder = cloud.app.state.volume_store.local_path(ws, "v")
    assert folder is not None
    for n in NAMES:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        (folder / n).write_bytes(b"")
    return sorted({"d0", "d1", "d2", *NAMES}, key=lambda p: p.split("/"))


def _listings(cloud: RealCloud) -> list[dict[str, str]]:
    """The query parameters of each listing of volume ``v`` sent so far."""
    return [dict(r.url.params) for r in cloud.requests
            if r.url.path.endswith("/volumes/v/files")]


def test_sdk_follows_every_page(client: Client, cloud: RealCloud) -> None:
    every = _fill(cloud, client)
    start = len(_listings(cloud))
    got = client.volumes.files("v")
    assert [f.path for f in got] == every  # 1208 entries: two pages of 1000
    sent = _listings(cloud)[start:]
    assert sent == [{"path": "", "limit": "1000"},
                    {"path": "", "limit": "1000", "after": every[999]}]
    small = [f.path for f in client.volumes.iter_files("v", "d1", page_size=150)]
    assert small == [p for p in every if p.startswith("d1/")]
    page = client.volumes.files_page("v", limit=3)
    assert [f.path for f in page.data] == every[:3]
    assert page.has_more and page.next_after == every[2]
    rest = client.volumes.files_page("v", limit=1000, after=every[-2])
    assert [f.path for f in rest.data] == every[-1:] and not rest.has_more
    with pytest.raises(ValidationFailed):
        client.volumes.files_page("v", limit=0)
    with pytest.raises(InvalidRequest) as exc:
        client.volumes.files_page("v", after="../x")
    assert exc.value.param == "after"


def test_cli_lists_files_past_one_page(client: Client, cloud: RealCloud) -> None:
    every = _fill(cloud, client)

    def run(*args: str) -> str:
        state = CliState(url=BASE, token=cloud.token, transport=cloud.transport)
        r = CliRunner().invoke(cli_app, list(args), obj=state, catch_exceptions=False,
                               env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        return r.stdout

    start = len(_listings(cloud))
    listed = json.loads(run("volume", "ls", "v", "--json"))
    assert [f["path"] for f in listed] == every
    assert [q.get("after") for q in _listings(cloud)[start:]] == [None, every[999]]
    table = run("volume", "ls", "v")
    rows = [line.split()[0] for line in table.splitlines()[1:] if line.strip()]
    assert rows == [p + ("/" if p in ("d0", "d1", "d2") else "") for p in every]
