"""``GET /deployments/{name}/logs`` returns a replica's output as is: a secret value the
replica prints (the service logging its config, a traceback quoting it) reaches any viewer
token in clear. Job and pod logs replace secret values with ``***``; deployment logs
should too."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from neocloud.server.db.tables import Replica
from tests.server.helpers import Cloud

VALUE = "hunter2-very-secret-value"


def test_deployment_logs_redact_secret_values(cloud: Cloud, tmp_path: Path) -> None:
    cloud.add_fake_node("n1")
    assert cloud.api("PUT", "/secrets/api-key", json={"value": VALUE}).status_code == 201
    r = cloud.api("POST", "/deployments", json={
        "name": "d", "service": "embeddings", "secrets": {"API_KEY": "api-key"}})
    assert r.status_code == 201, r.text
    cloud.reconcile(3)
    log = tmp_path / "replica.log"
    log.write_text(f"loading with API_KEY={VALUE}\n")
    with cloud.app.state.db.session() as s:
        rep = s.scalars(select(Replica)).first()
        assert rep is not None
        rep.handle = {**rep.handle, "log_path": str(log)}
    viewer = cloud.api("POST", "/tokens", json={"name": "v", "role": "viewer"}).json()["token"]
    out = cloud.api("GET", "/deployments/d/logs", viewer)
    assert out.status_code == 200, out.text
    assert "API_KEY=" in out.text
    assert VALUE not in out.text
