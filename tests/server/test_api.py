"""REST API: tokens, roles, tenancy and bad input (both databases)."""

from __future__ import annotations

import pytest

from tests.server.helpers import Cloud


def _err(r) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_every_route_needs_a_token(cloud: Cloud) -> None:
    for path in ("/api/v1/deployments", "/api/v1/nodes", "/api/v1/usage", "/v1/models"):
        r = cloud.client.get(path)
        assert r.status_code == 401
        assert "token" in _err(r)["message"]
        r = cloud.client.get(path, headers={"Authorization": "Bearer nc_nope_nope"})
        assert r.status_code == 401


def test_openapi_schema_lists_routes(cloud: Cloud) -> None:
    schema = cloud.client.get("/openapi.json").json()
    assert "/api/v1/deployments" in schema["paths"]
    assert "/api/v1/deployments/{name}" in schema["paths"]


def test_whoami_and_token_lifecycle(cloud: Cloud) -> None:
    me = cloud.api("GET", "/whoami").json()
    assert me["workspace"]["name"] == "default" and me["token"]["role"] == "admin"
    r = cloud.api("POST", "/tokens", json={"name": "ci", "role": "viewer"})
    assert r.status_code == 201
    secret = r.json()["token"]
    assert secret.startswith("nc_")
    listed = cloud.api("GET", "/tokens").json()["data"]
    assert "token" not in listed[0] and {t["name"] for t in listed} >= {"ci"}
    assert all(secret not in str(t) for t in listed)
    # A viewer reads but cannot change.
    assert cloud.api("GET", "/deployments", token=secret).status_code == 200
    r = cloud.api("POST", "/deployments", token=secret,
                  json={"name": "x", "service": "embeddings"})
    assert r.status_code == 403 and "member" in _err(r)["message"]
    assert cloud.api("DELETE", "/tokens/ci").status_code == 204
    assert cloud.api("GET", "/deployments", token=secret).status_code == 401


def test_only_operators_manage_inventory(cloud: Cloud) -> None:
    tok = cloud.new_workspace("team-a")
    r = cloud.api("POST", "/shapes", token=tok, json={
        "name": "gpu.x", "cpu_milli": 1000, "memory_mib": 1024, "price_per_hour_usd": 1})
    assert r.status_code == 403
    r = cloud.api("POST", "/workspaces", token=tok, json={"name": "evil"})
    assert r.status_code == 403
    assert [w["name"] for w in cloud.api("GET", "/workspaces", token=tok).json()["data"]] == [
        "team-a"]


def test_tenancy_across_every_resource_route(cloud: Cloud) -> None:
    cloud.add_fake_node("n1")
    tok_b = cloud.new_workspace("team-b")
    r = cloud.api("POST", "/deployments", token=tok_b,
                  json={"name": "secret-model", "service": "embeddings", "replicas": 0})
    assert r.status_code == 201
    cloud.api("POST", "/tokens", token=tok_b, json={"name": "b-ci"})
    cloud.reconcile()
    # Workspace A (the default one) sees none of B's resources, and cannot change them.
    a = cloud.token
    assert cloud.api("GET", "/deployments", token=a).json()["data"] == []
    for method, path, body in [
        ("GET", "/deployments/secret-model", None),
        ("PATCH", "/deployments/secret-model", {"replicas": 3}),
        ("DELETE", "/deployments/secret-model", None),
        ("GET", "/deployments/secret-model/events", None),
        ("GET", "/deployments/secret-model/logs", None),
        ("DELETE", "/tokens/b-ci", None),
    ]:
        r = cloud.api(method, path, token=a, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert "secret-model" not in r.text or "not found" in r.text
    assert all(e["name"] != "secret-model" for e in
               cloud.api("GET", "/events", token=a).json()["data"])
    assert all(ln["name"] != "secret-model" for ln in
               cloud.api("GET", "/usage", token=a).json()["lines"])
    # Through the gateway too.
    r = cloud.client.post("/v1/embeddings", headers=cloud.h(a),
                          json={"model": "secret-model", "input": "hi"})
    assert r.status_code == 404
    r = cloud.client.get("/endpoints/secret-model/anything", headers=cloud.h(a))
    assert r.status_code == 404
    # B still has everything.
    dep = cloud.api("GET", "/deployments/secret-model", token=tok_b).json()
    assert dep["replicas"] == 0
    assert "b-ci" in {t["name"] for t in cloud.api("GET", "/tokens", token=tok_b).json()["data"]}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"name": "a", "service": "embeddings", "replicas": -1}, 422, "replicas"),
        ({"name": "a", "service": "embeddings", "replicas": "two"}, 422, "replicas"),
        ({"name": "a", "service": "embeddings", "shape": "gpu.nope"}, 404, "shape"),
        ({"name": "Bad_Name", "service": "embeddings"}, 422, "name"),
        ({"service": "embeddings"}, 422, "name"),
        ({"name": "a", "service": "not a ref"}, 400, "service"),
        ({"name": "a", "service": "embeddings", "env": {"1X": "y"}}, 400, "env"),
        ({"name": "a", "service": "embeddings", "extra": 1}, 422, "extra"),
    ],
)
def test_bad_deployment_input_names_the_field(cloud: Cloud, body, status, param) -> None:
    r = cloud.api("POST", "/deployments", json=body)
    assert r.status_code == status, r.text
    err = _err(r)
    assert err["param"] == param
    assert cloud.api("GET", "/deployments").json()["data"] == []  # nothing half-written


def test_malformed_json_and_huge_body(cloud: Cloud) -> None:
    r = cloud.client.post("/api/v1/deployments", headers={**cloud.h(),
                          "content-type": "application/json"}, content=b'{"name": "a",')
    assert r.status_code == 400 and "JSON" in _err(r)["message"]
    big = b'{"name": "a", "service": "embeddings", "env": {"A": "' + b"x" * (10 * 2**20) + b'"}}'
    r = cloud.client.post("/api/v1/deployments", headers={**cloud.h(),
                          "content-type": "application/json"}, content=big)
    assert r.status_code == 413 and _err(r)["code"] == "payload_too_large"
    r = cloud.client.post("/v1/embeddings", headers=cloud.h(), content=big)
    assert r.status_code == 413
    assert cloud.api("GET", "/deployments").json()["data"] == []


def test_duplicate_names(cloud: Cloud) -> None:
    body = {"name": "dup", "service": "embeddings", "replicas": 0}
    assert cloud.api("POST", "/deployments", json=body).status_code == 201
    r = cloud.api("POST", "/deployments", json=body)
    assert r.status_code == 409 and _err(r)["param"] == "name"
    assert cloud.api("POST", "/tokens", json={"name": "x"}).status_code == 201
    assert cloud.api("POST", "/tokens", json={"name": "x"}).status_code == 409
    node = {"name": "n", "cpu_milli": 1000, "memory_mib": 1000, "backend": "fake"}
    assert cloud.api("POST", "/nodes", json=node).status_code == 201
    assert cloud.api("POST", "/nodes", json=node).status_code == 409


def test_empty_embedding_input_is_a_400(cloud: Cloud) -> None:
    cloud.api("POST", "/deployments", json={"name": "e", "service": "embeddings", "replicas": 0})
    cloud.reconcile()
    r = cloud.client.post("/v1/embeddings", headers=cloud.h(), json={"model": "e", "input": []})
    assert r.status_code == 400, r.text
    assert _err(r)["param"] == "input"


def test_shapes_defaults_and_operator_add(cloud: Cloud) -> None:
    names = {s["name"] for s in cloud.api("GET", "/shapes").json()["data"]}
    assert {"cpu.small", "cpu.large", "gpu.a10", "gpu.h100x8"} <= names
    r = cloud.api("POST", "/shapes", json={"name": "gpu.l4", "cpu_milli": 4000,
                  "memory_mib": 16000, "gpu_count": 1, "gpu_type": "L4",
                  "price_per_hour_usd": 0.8})
    assert r.status_code == 201
    assert cloud.api("GET", "/shapes/gpu.l4").json()["price_per_hour_usd"] == 0.8
    r = cloud.api("POST", "/shapes", json={"name": "bad", "cpu_milli": 1, "memory_mib": 1,
                  "gpu_count": 1, "gpu_milli": 500, "price_per_hour_usd": 1})
    assert r.status_code == 422
    # a price of 1e308 was stored: its micro-dollars were infinite, and every bill and
    # every stop of a replica of that shape failed with a 500 / a reconciler error
    r = cloud.api("POST", "/shapes", json={"name": "dear", "cpu_milli": 1, "memory_mib": 1,
                  "price_per_hour_usd": 1e308})
    assert r.status_code == 422 and r.json()["error"]["param"].endswith("price_per_hour_usd")
    assert cloud.api("GET", "/usage").status_code == 200


def test_revoked_token_is_refused_by_the_gateway_at_once(cloud: Cloud) -> None:
    secret = cloud.api("POST", "/tokens", json={"name": "temp"}).json()["token"]
    h = {"Authorization": f"Bearer {secret}"}
    assert cloud.client.get("/v1/models", headers=h).status_code == 200  # now cached
    assert cloud.api("DELETE", "/tokens/temp").status_code == 204
    r = cloud.client.get("/v1/models", headers=h)
    assert r.status_code == 401
