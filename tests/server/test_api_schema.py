"""A truthful schema: documented error statuses, ``Allow`` on 405, strict JSON types, and
the server's rules stated in the OpenAPI schema (both databases)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.server.helpers import Cloud


def _schema(cloud: Cloud) -> dict[str, Any]:
    r = cloud.client.get("/openapi.json")
    assert r.status_code == 200
    schema: dict[str, Any] = r.json()
    return schema


def _error_schema_ok(spec: dict[str, Any]) -> bool:
    content = spec.get("content", {}).get("application/json", {})
    schema = content.get("schema", {})
    return schema.get("$ref", "").endswith("/ErrorResponse") or "error" in schema.get(
        "properties", {})


def test_every_operation_documents_its_errors_with_the_error_object(cloud: Cloud) -> None:
    paths = _schema(cloud)["paths"]
    ops = [(p, m, op) for p, item in paths.items() if p.startswith("/api/v1/")
           for m, op in item.items()]
    assert len(ops) > 40
    for path, method, op in ops:
        statuses = {int(s) for s in op["responses"] if s.isdigit()}
        assert 401 in statuses, (method, path)
        if method in ("post", "put", "patch", "delete"):
            assert {403, 409} <= statuses, (method, path, statuses)
        for status, spec in op["responses"].items():
            if status.isdigit() and int(status) >= 400:
                assert _error_schema_ok(spec), (method, path, status, spec)
        assert "HTTPValidationError" not in str(op["responses"])
    create = paths["/api/v1/deployments"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "413", "422"} <= set(create)
    logs = paths["/api/v1/deployments/{name}/logs"]["get"]["responses"]
    assert "text/plain" in logs["200"]["content"]
    assert set(logs["404"]["content"]) == {"application/json"}  # errors stay JSON


def test_schema_states_the_rules_the_server_checks(cloud: Cloud) -> None:
    schema = _schema(cloud)
    comps = schema["components"]["schemas"]
    dep = comps["DeploymentCreate"]["properties"]
    assert re.match(dep["service"]["pattern"], "pkg.mod:Svc")
    assert not re.match(dep["service"]["pattern"], "not a ref")
    assert dep["env"]["propertyNames"]["pattern"] == r"^[A-Za-z_][A-Za-z0-9_]*$"
    assert "PORT" in dep["env"]["propertyNames"]["not"]["enum"]
    assert dep["env"]["additionalProperties"]["pattern"] == "^[^\\u0000]*$"
    job = comps["JobCreate"]["properties"]
    assert job["command"]["items"]["pattern"] == "^[^\\u0000]*$"
    assert "pattern" in comps["PodCreate"]["properties"]["ssh_public_key"]
    assert comps["ShapeCreate"]["not"]["required"] == ["gpu_count", "gpu_milli"]
    secret = schema["paths"]["/api/v1/secrets/{name}"]["put"]["parameters"][0]
    assert secret["schema"]["pattern"] == r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"
    files = schema["paths"]["/api/v1/volumes/{name}/files/{path}"]["put"]["parameters"]
    assert "255" in next(p for p in files if p["name"] == "path")["schema"]["pattern"]


def test_405_lists_every_method_the_path_serves(cloud: Cloud) -> None:
    r = cloud.api("PUT", "/deployments/x", json={})
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = cloud.api("DELETE", "/deployments")
    assert set(r.headers["allow"].split(", ")) == {"GET", "POST"}
    r = cloud.api("GET", "/pods/x/start")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/jobs", {"name": "j", "command": ["true"], "preemptible": 0}, "preemptible"),
        ("/jobs", {"name": "j", "command": ["true"], "workers": True}, "workers"),
        ("/deployments", {"name": "d", "service": "embeddings", "replicas": "2"}, "replicas"),
        ("/deployments", {"name": "d", "service": "embeddings", "preemptible": "yes"},
         "preemptible"),
        ("/shapes", {"name": "s", "cpu_milli": 1, "memory_mib": 1,
                     "price_per_hour_usd": False}, "price_per_hour_usd"),
        ("/nodes", {"name": "n", "cpu_milli": 1, "memory_mib": 1,
                    "gpus": [{"type": "H100", "count": 1, "memory_mib": False}]},
         "gpus.0.memory_mib"),
    ],
)
def test_strict_json_types(cloud: Cloud, path: str, body: dict[str, Any], param: str) -> None:
    r = cloud.api("POST", path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["code"] == "validation_failed"


def test_strict_types_still_take_whole_numbers_as_prices(cloud: Cloud) -> None:
    r = cloud.api("POST", "/shapes", json={"name": "s1", "cpu_milli": 1, "memory_mib": 1,
                                           "price_per_hour_usd": 2})
    assert r.status_code == 201 and r.json()["price_per_hour_usd"] == 2.0
    r = cloud.api("PUT", "/workspaces/default/quota", json={"gpus": {"H100": True}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "gpus"


def test_schema_says_what_schemathesis_found_missing(cloud: Cloud) -> None:
    """The two inputs a schemathesis run sent as schema-valid and the server refused: a
    deployment with neither ``service`` nor engine ``vllm``, and invoice period year 0000."""
    schema = _schema(cloud)
    any_of = schema["components"]["schemas"]["DeploymentCreate"]["anyOf"]
    body = {"name": "a"}
    assert not any(all(k in body for k in alt.get("required", [])) for alt in any_of)
    r = cloud.api("POST", "/deployments", params={"dry_run": "true"}, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "service"
    period = schema["paths"]["/api/v1/invoices/{period}"]["get"]["parameters"]
    pattern = next(p["schema"]["pattern"] for p in period if p["name"] == "period")
    assert not re.match(pattern, "0000-07")
    assert re.match(pattern, "2026-11") and re.match(pattern, "0001-01-31")
    r = cloud.api("GET", "/invoices/0000-07")
    assert r.status_code == 400 and r.json()["error"]["param"] == "period"


def test_routes_that_admit_new_work_document_402(cloud: Cloud) -> None:
    """A spent hard-stopped budget answers 402 on creates, scale-ups and pod starts; the
    schema must say so (schemathesis counts an undocumented status as a violation)."""
    paths = _schema(cloud)["paths"]
    for path, method in [("/api/v1/deployments", "post"), ("/api/v1/deployments/{name}", "patch"),
                         ("/api/v1/jobs", "post"), ("/api/v1/pods", "post"),
                         ("/api/v1/pods/{name}/start", "post")]:
        assert "402" in paths[path][method]["responses"], (method, path)
        assert _error_schema_ok(paths[path][method]["responses"]["402"])
