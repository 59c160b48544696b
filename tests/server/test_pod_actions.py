"""A pod's start and stop: each allowed only in the states it applies to (anything else
is a 409 that names the state, through the API and the console), and one event per
status change (a stop records ``Stopping`` once, not once by the route and once by the
reconciler). Fake backend, both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from neocloud.podrun import find_sshd
from neocloud.server.db.tables import Event
from tests.server.helpers import Cloud
from tests.server.workload_helpers import error_of, get, reconcile_workloads

pytestmark = pytest.mark.skipif(find_sshd() is None, reason="pods need sshd on the node")


def _reasons(cloud: Cloud, name: str) -> list[str]:
    with cloud.app.state.db.session() as s:
        return list(s.scalars(select(Event.reason).where(Event.kind == "pod", Event.name == name)
                              .order_by(Event.id)))


def _running_pod(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    r = cloud.api("POST", "/pods", json={"name": "dev", "shape": "cpu.small"})
    assert r.status_code == 201, r.text
    reconcile_workloads(cloud, 3)
    assert get(cloud, "/pods/dev")["status"] == "running"


def test_start_and_stop_only_where_the_state_allows_them(cloud: Cloud) -> None:
    _running_pod(cloud)
    r = cloud.api("POST", "/pods/dev/start")
    assert r.status_code == 409, r.text
    err = error_of(r)
    assert err["code"] == "conflict" and "running" in err["message"], err
    r = cloud.api("POST", "/pods/dev/stop")
    assert r.status_code == 200 and r.json()["status"] == "stopping", r.text
    r = cloud.api("POST", "/pods/dev/stop")  # a second stop while it stops
    assert r.status_code == 409 and "stopping" in error_of(r)["message"], r.text
    r = cloud.api("POST", "/pods/dev/start")
    assert r.status_code == 409 and "stopping" in error_of(r)["message"], r.text
    reconcile_workloads(cloud, 2)
    assert get(cloud, "/pods/dev")["status"] == "stopped"
    r = cloud.api("POST", "/pods/dev/stop")
    assert r.status_code == 409 and "stopped" in error_of(r)["message"], r.text
    # The console's action answers the same.
    r = cloud.client.post("/ui/login", data={"token": cloud.token}, follow_redirects=False)
    assert r.status_code == 303
    h = {"X-Neocloud-Console": "1"}
    r = cloud.client.post("/ui/actions/pods/dev/stop", json={}, headers=h)
    assert r.status_code == 409 and "stopped" in r.json()["error"]["message"], r.text
    page = cloud.client.get("/ui/pods/dev").text
    assert 'id="start-form" data-when="start" >' in page  # shown
    assert 'id="stop-form" data-when="stop" hidden>' in page  # hidden
    assert cloud.api("POST", "/pods/dev/start").status_code == 200
    reconcile_workloads(cloud, 3)
    assert get(cloud, "/pods/dev")["status"] == "running"
    page = cloud.client.get("/ui/pods/dev").text
    assert 'id="start-form" data-when="start" hidden>' in page
    assert 'id="stop-form" data-when="stop" >' in page


def test_a_stop_records_one_stopping_event(cloud: Cloud) -> None:
    _running_pod(cloud)
    assert cloud.api("POST", "/pods/dev/stop").status_code == 200
    reconcile_workloads(cloud, 3)
    assert get(cloud, "/pods/dev")["status"] == "stopped"
    reasons = _reasons(cloud, "dev")
    assert reasons.count("Stopping") == 1, reasons
    assert reasons[-2:] == ["Stopping", "Stopped"], reasons
