"""Environments and command lines a process cannot start with are refused up front.

Found: a deployment whose ``env`` held a 5 MB value answered 201, then every replica
crash-looped with "[Errno 7] Argument list too long": Linux refuses to ``execve`` with one
environment or argument string over ``MAX_ARG_STRLEN`` (128 KiB) or all of them over
``ARG_MAX`` (2 MiB by default). The request must be a 422 naming the field instead.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from neocloud.models.common import (
    ARG_POINTER_BYTES,
    MAX_ARG_STRLEN,
    MAX_ARGV_TOTAL_BYTES,
    MAX_ENV_TOTAL_BYTES,
)
from neocloud.models.deployments import DeploymentCreate
from neocloud.models.jobs import JobCreate
from tests.server.helpers import Cloud
from tests.server.workload_helpers import error_of

HUGE = "x" * 5_000_000

#: ``(method, path, body)`` of each call that takes an ``env``, with ``env`` left out.
CALLS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "deployment": ("POST", "/deployments", {"name": "d", "service": "chat",
                                            "shape": "cpu.small", "replicas": 0}),
    "job": ("POST", "/jobs", {"name": "j", "command": ["true"], "shape": "cpu.small"}),
    "pod": ("POST", "/pods", {"name": "p"}),
}


@pytest.mark.parametrize("what", list(CALLS))
def test_an_env_value_over_max_arg_strlen_is_a_422_naming_it(cloud: Cloud, what: str) -> None:
    method, path, body = CALLS[what]
    r = cloud.api(method, path, json={**body, "env": {"OK": "1", "A": HUGE}})
    assert r.status_code == 422, r.text[:500]
    err = error_of(r)
    assert err["param"] == "env.A" and "MAX_ARG_STRLEN" in err["message"], err
    assert HUGE[:1000] not in r.text  # the value is not echoed back
    assert cloud.api("GET", f"{path}/{body['name']}").status_code == 404


def test_an_update_cannot_bring_a_huge_env_in(cloud: Cloud) -> None:
    method, path, body = CALLS["deployment"]
    assert cloud.api(method, path, json=body).status_code == 201
    r = cloud.api("PATCH", "/deployments/d", json={"env": {"A": HUGE}})
    assert r.status_code == 422 and error_of(r)["param"] == "env.A", r.text[:500]
    assert cloud.api("GET", "/deployments/d").json()["env"] == {}


def _env_error(env: dict[str, str]) -> dict[str, Any] | None:
    try:
        DeploymentCreate(name="d", service="chat", env=env)
    except ValidationError as e:
        return dict(e.errors()[0])
    return None


def test_the_limit_is_the_whole_name_value_string_with_its_nul() -> None:
    """``NAME=value`` and its NUL fill ``MAX_ARG_STRLEN`` exactly: taken; one byte more
    (in the value or in the name) is refused, naming the variable."""
    fits = "v" * (MAX_ARG_STRLEN - len("AB=") - 1)
    assert _env_error({"AB": fits}) is None
    err = _env_error({"AB": fits + "v"})
    assert err is not None and err["loc"] == ("env", "AB"), err
    err = _env_error({"ABC": fits})
    assert err is not None and err["loc"] == ("env", "ABC"), err
    # bytes, not characters: "é" is two bytes in UTF-8
    err = _env_error({"AB": fits[: -1] + "é"})
    assert err is not None and err["loc"] == ("env", "AB"), err


def test_the_whole_environment_is_bounded() -> None:
    value = "v" * 100_000
    per = len("E00=") + len(value) + 1 + ARG_POINTER_BYTES
    under = {f"E{i:02d}": value for i in range(MAX_ENV_TOTAL_BYTES // per)}
    assert _env_error(under) is None
    over = {**under, "E99": value}
    err = _env_error(over)
    assert err is not None and err["loc"] == ("env",), err
    assert str(MAX_ENV_TOTAL_BYTES) in err["msg"]


def test_the_api_names_env_for_an_environment_too_large_in_all(cloud: Cloud) -> None:
    env = {f"E{i:02d}": "v" * 100_000 for i in range(12)}  # 12 x 100 kB > 1 MiB
    r = cloud.api("POST", "/deployments", json={**CALLS["deployment"][2], "env": env})
    assert r.status_code == 422 and error_of(r)["param"] == "env", r.text[:500]


def test_a_job_command_line_a_process_cannot_take_is_refused(cloud: Cloud) -> None:
    body = CALLS["job"][2]
    r = cloud.api("POST", "/jobs", json={**body, "command": ["echo", "x" * MAX_ARG_STRLEN]})
    assert r.status_code == 422 and error_of(r)["param"] == "command.1", r.text[:500]
    arg = "x" * 100_000
    many = ["echo"] + [arg] * (MAX_ARGV_TOTAL_BYTES // len(arg) + 1)
    r = cloud.api("POST", "/jobs", json={**body, "command": many})
    assert r.status_code == 422 and error_of(r)["param"] == "command", r.text[:500]
    JobCreate(name="j", command=["echo", "x" * (MAX_ARG_STRLEN - 1)])  # the largest taken
