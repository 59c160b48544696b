"""The console's data and action routes with the fake backend (no browser): logs come
through the backend that ran the workload, and bad input is a 4xx error object."""

from __future__ import annotations

from sqlalchemy import select

from neocloud.server.db.tables import Replica
from tests.server.helpers import Cloud

SECRET = "s3cr3t-value-for-the-console"


def _login(cloud: Cloud) -> None:
    r = cloud.client.post("/ui/login", data={"token": cloud.token}, follow_redirects=False)
    assert r.status_code == 303, r.text


def test_log_panel_reads_through_the_backend_and_masks_secrets(cloud: Cloud) -> None:
    # The fake backend keeps output in memory, as the Ray backend keeps it on its node:
    # there is no local log file the console could open itself.
    cloud.add_fake_node("n1")
    assert cloud.api("PUT", "/secrets/k", json={"value": SECRET}).status_code == 201
    r = cloud.api("POST", "/deployments", json={
        "name": "d", "service": "embeddings", "secrets": {"MODEL_AUTH": "k"}})
    assert r.status_code == 201, r.text
    cloud.reconcile(3)
    with cloud.app.state.db.session() as s:
        rid = s.scalars(select(Replica.id)).one()
    cloud.fake.write(rid, "loaded the model\n")
    cloud.fake.write(rid, f"old line {SECRET}\n", masked=False)
    _login(cloud)
    r = cloud.client.get("/ui/data/logs/deployments/d?tail=50")
    assert r.status_code == 200, r.text
    assert "loaded the model" in r.text
    assert SECRET not in r.text and "old line ***" in r.text
    assert cloud.client.get("/ui/data/logs/volumes/d").status_code == 404


def test_console_actions_refuse_malformed_bodies_with_an_error_object(cloud: Cloud) -> None:
    assert cloud.api("POST", "/deployments", json={
        "name": "d", "service": "chat", "replicas": 0}).status_code == 201
    _login(cloud)
    h = {"X-Neocloud-Console": "1"}
    for body in ([1, 2], {"replicas": "many"}, "7"):
        r = cloud.client.post("/ui/actions/deployments/d/scale", json=body, headers=h)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["param"] == "replicas"
    for body in ([1], {"input": "hi", "max_tokens": "lots"}):
        r = cloud.client.post("/ui/playground/d", json=body, headers=h)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
