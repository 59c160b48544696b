"""``GET /events?kind=``: a kind no event is stored under is a 422 naming ``kind`` and
listing the kinds, not an empty list that reads as "nothing happened" (the CLI already
refused ``--kind zzz``)."""

from __future__ import annotations

from sqlalchemy import select

from neocloud.models.events import EventKind
from neocloud.server.db.tables import Workspace
from neocloud.server.services import events
from tests.server.helpers import Cloud
from tests.server.workload_helpers import error_of


def test_an_unknown_kind_is_a_422_listing_the_kinds(cloud: Cloud) -> None:
    r = cloud.api("GET", "/events", params={"kind": "zzz"})
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["param"] == "query.kind", err
    for kind in ("deployment", "replica", "job", "pod", "volume", "secret", "budget"):
        assert f"'{kind}'" in err["message"], err


def test_every_stored_kind_filters(cloud: Cloud) -> None:
    """Each kind is taken, ``replica`` too (events stored under it stay readable)."""
    assert cloud.api("POST", "/volumes", json={"name": "data"}).status_code == 201
    with cloud.app.state.db.session() as s:
        ws = s.scalars(select(Workspace.id).where(Workspace.name == "default")).one()
        events.record(s, workspace_id=ws, kind="replica", name="web", reason="Ready",
                      message="replica ready")
    for kind in EventKind:
        r = cloud.api("GET", "/events", params={"kind": kind.value})
        assert r.status_code == 200, (kind, r.text)
        assert {e["kind"] for e in r.json()["data"]} <= {kind.value}
    got = cloud.api("GET", "/events", params={"kind": "replica"}).json()["data"]
    assert [(e["kind"], e["name"]) for e in got] == [("replica", "web")]
    got = cloud.api("GET", "/events", params={"kind": "volume"}).json()["data"]
    assert [(e["kind"], e["name"]) for e in got] == [("volume", "data")]
