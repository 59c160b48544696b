"""Refused ``/metrics`` calls are in the audit log, as every denied attempt is (only the
``/api/v1`` calls were); its successes, a scrape every few seconds, are not (both
databases)."""

from __future__ import annotations

from typing import Any

from tests.server.helpers import Cloud


def _metrics_entries(cloud: Cloud) -> list[dict[str, Any]]:
    r = cloud.client.get("/api/v1/audit", headers=cloud.h())
    assert r.status_code == 200, r.text
    return [e for e in r.json()["data"] if e["target"] == "metrics"]


def test_denied_metrics_calls_are_recorded_and_scrapes_are_not(cloud: Cloud) -> None:
    tenant = cloud.new_workspace("team-a", role="admin")
    assert cloud.client.get("/metrics").status_code == 401
    assert cloud.client.get("/metrics", headers=cloud.h("nc_unknown_token")).status_code == 401
    assert cloud.client.get("/metrics", headers=cloud.h(tenant)).status_code == 403
    for _ in range(3):
        assert cloud.client.get("/metrics", headers=cloud.h()).status_code == 200
    entries = _metrics_entries(cloud)
    assert sorted(e["status"] for e in entries) == [401, 401, 403], entries
    assert all(e["outcome"] == "denied" and e["method"] == "GET" for e in entries)
    refused = next(e for e in entries if e["status"] == 403)
    assert refused["token_name"] == "t1" and refused["workspace"] == "team-a"
