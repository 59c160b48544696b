"""Malformed request bodies the JSON parser itself refuses: always a 400 OpenAI error
object naming ``body``, never a 500.

Found: a body nested 100,000 arrays deep made the audit middleware's ``json.loads``
raise ``RecursionError`` (not a ``ValueError``) while it read the refused create's name:
the answer became a plain-text ``Internal Server Error``. Invalid UTF-8 and deep nesting
were answered ``{"param": null, "code": "http_error"}`` ("There was an error parsing the
body"), naming no field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from tests.server.helpers import Cloud, open_cloud

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = (b'{"name":"j","command":["true"],"env":' + b'{"a":' * 5000 + b"1"
               + b"}" * 5000 + b"}")


@pytest.mark.parametrize("path,body,words", [
    ("/jobs", DEEP, "nested"),
    ("/jobs", DEEP_OBJECT, "nested"),
    ("/volumes", DEEP, "nested"),
    ("/volumes", b'{"name":"\xff\xfe"}', "UTF-8"),
    ("/pods", b'{"name":"\xc3\x28"}', "UTF-8"),
])
def test_unparseable_body_is_a_400_naming_body(cloud: Cloud, path: str, body: bytes,
                                               words: str) -> None:
    r = cloud.client.post(f"/api/v1{path}", content=body, headers={
        **cloud.h(), "content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "body", err
    assert err["code"] == "invalid_json", err
    assert words in err["message"], err


def test_deep_body_is_audited_as_refused(cloud: Cloud) -> None:
    """The audit entry of the refused call is still written (the middleware survives)."""
    r = cloud.client.post("/api/v1/jobs", content=DEEP, headers={
        **cloud.h(), "content-type": "application/json"})
    assert r.status_code == 400
    entries = cloud.api("GET", "/audit").json()["data"]
    assert any(e["status"] == 400 and e["target"].startswith("jobs") for e in entries), entries


def test_full_database_is_a_507_not_a_500(tmp_path: Path, sqlite_url: str) -> None:
    """The data folder's disk is full: SQLite refuses to grow (``SQLITE_FULL``, made real
    here with ``PRAGMA max_page_count``). Writes answered 500 "internal error"; now 507
    ``insufficient_storage``, and reads keep working."""
    cloud, client = open_cloud(tmp_path / "home", sqlite_url)
    try:
        engine = cloud.app.state.db.engine

        @event.listens_for(engine, "connect")
        def _cap(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            pages = cur.execute("PRAGMA page_count").fetchone()[0]
            cur.execute(f"PRAGMA max_page_count={pages}")
            cur.close()

        engine.dispose()  # every new connection gets the cap
        seen: list[int] = []
        for i in range(40):
            r = cloud.api("PUT", f"/secrets/big-{i}", json={"value": "v" * 60_000})
            seen.append(r.status_code)
            if r.status_code == 507:
                err = r.json()["error"]
                assert err["code"] == "insufficient_storage", err
                break
        assert 500 not in seen and seen[-1] == 507, seen
        assert cloud.api("GET", "/secrets").status_code == 200
    finally:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("path,body,param", [
    ("/jobs", rb'{"name":"j","command":["\ud800"]}', "command.0"),
    ("/jobs", rb'{"name":"j","command":["true"],"env":{"A":"x\udc80"}}', "env.A"),
    ("/pods", rb'{"name":"p","env":{"A":"\ud83d"}}', "env.A"),
    ("/secrets/s", rb'{"value":"\ud800"}', "value"),
])
def test_lone_surrogate_is_a_422_naming_the_field(cloud: Cloud, path: str, body: bytes,
                                                  param: str) -> None:
    """JSON may escape a lone surrogate (``"\\ud800"``), which is no Unicode text: a
    command or env value holding one was stored, then its answer failed to serialize
    (500), and no process could have been given it."""
    method = "PUT" if path.startswith("/secrets") else "POST"
    r = cloud.client.request(method, f"/api/v1{path}", content=body, headers={
        **cloud.h(), "content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param, r.text
    assert cloud.api("GET", "/jobs").json()["data"] == []


def test_secret_value_with_nul_is_refused(cloud: Cloud) -> None:
    """Accepted (201), then every workload given it failed: "embedded null byte"."""
    r = cloud.api("PUT", "/secrets/s", json={"value": "pass\x00word"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "value"
    assert "pass" not in r.text  # the value never comes back, even in part
    assert cloud.api("GET", "/secrets").json()["data"] == []
