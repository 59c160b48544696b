"""Integers larger than the database column hold are not bounded by the models: the
request reaches the database and answers 500 instead of 422 naming the field."""

from __future__ import annotations

import pytest

from tests.server.helpers import Cloud

HUGE = 10**22


@pytest.mark.parametrize("method,path,body,field", [
    ("PUT", "/workspaces/default/quota", {"cpu_milli": HUGE}, "cpu_milli"),
    ("POST", "/shapes", {"name": "big", "cpu_milli": HUGE, "memory_mib": 1,
                         "price_per_hour_usd": 1}, "cpu_milli"),
    ("POST", "/nodes", {"name": "big", "cpu_milli": HUGE, "memory_mib": 1}, "cpu_milli"),
])
def test_huge_integer_is_a_422_naming_the_field(cloud: Cloud, method: str, path: str,
                                                body: dict, field: str) -> None:
    r = cloud.api(method, path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == field
