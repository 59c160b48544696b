"""The control plane's Prometheus ``/metrics`` names every workspace and deployment in its
labels: it needs a token of an operator workspace unless ``public_metrics`` opens it;
``/healthz`` stays open (both databases)."""

from __future__ import annotations

from pathlib import Path

from tests.server.helpers import Cloud, open_cloud


def _metrics(cloud: Cloud, token: str | None = None) -> tuple[int, str]:
    headers = cloud.h(token) if token is not None else {}
    r = cloud.client.get("/metrics", headers=headers)
    return r.status_code, r.text


def test_metrics_needs_an_operator_token(cloud: Cloud) -> None:
    team_admin = cloud.new_workspace("team-a", role="admin")
    viewer = cloud.api("POST", "/tokens", json={"name": "prom", "role": "viewer"}).json()
    assert cloud.client.get("/healthz").status_code == 200  # stays open

    status, text = _metrics(cloud)
    assert status == 401 and "neocloud_" not in text
    status, text = _metrics(cloud, "nc_unknown_token")
    assert status == 401
    status, text = _metrics(cloud, team_admin)  # an admin, of a tenant workspace
    assert status == 403 and "operator" in text and "neocloud_gpus" not in text

    for token in (cloud.token, viewer["token"]):  # operator admin, operator viewer
        status, text = _metrics(cloud, token)
        assert status == 200, text
        assert "neocloud_gpus" in text


def test_metrics_public_by_setting(tmp_path: Path, db_url: str) -> None:
    cloud, client = open_cloud(tmp_path / "home", db_url, public_metrics=True)
    try:
        status, text = _metrics(cloud)
        assert status == 200 and "neocloud_gpus" in text
    finally:
        client.__exit__(None, None, None)
