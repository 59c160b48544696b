"""Schemathesis hooks for ``run_schemathesis.sh`` (``SCHEMATHESIS_HOOKS=tests.fuzz.hooks``).

The one exclusion: the run never revokes its own token. A ``DELETE /api/v1/tokens/{name}``
(or ``/api/v1/workspaces/{name}/tokens/{token}``) naming it (a generated name, or one taken
from ``/whoami`` by a stateful link) is sent for another, absent token instead; every
other call goes out as generated.

The schema states every rule it can (patterns, lengths, bounds, one-of). These are outside
what OpenAPI can say, so their refusals of schema-valid data are not failures:

- a node has GPUs of one type only (a rule across the items of ``gpus``): a 422 for a body
  that mixes types is right;
- no two volumes of a job or pod are mounted at one path (a rule across the items of
  ``volumes``; identical items are refused by the schema's ``uniqueItems``);
- a job's ``command[0]`` must name a program: one of only white space is refused with a
  400 naming ``command.0`` (the schema can bound a length, not what the characters are);
- a period (``2026-11-30``) must be a calendar date: the schema's pattern allows day 31 of
  every month;
- ``max_surge`` and ``max_unavailable`` may not both be 0 (a rule across two fields, a
  422 on create);
- a metrics window may not be longer than its resolution's buckets are kept (a rule
  across two query parameters);
- the rules of an autoscaling config that compare two of its fields (the delay to zero
  not shorter than the delay down, the panic window not longer than the window): the
  field that breaks the rule is named (``param="autoscaling.scale_to_zero_delay_s"``,
  ``autoscaling.max_replicas``...);
- a PATCH of a deployment is checked against what is stored: a ``service`` for a
  deployment whose engine is ``vllm`` (or no service when moving to ``builtin`` with none
  stored) is refused with a 400 naming ``service``; a ``max_surge`` or ``max_unavailable``
  that leaves both at 0 together with the stored other one is refused with a 400 naming
  ``max_surge``;
- an environment variable may not be set both in ``env`` and from ``secrets`` (a rule across
  the keys of two objects): a 400 naming ``secrets.<NAME>`` for such a body is right;
- deleting a deployment is graceful (as in Kubernetes): the DELETE answers once the
  deployment is ``deleting``, and it stays readable, in that status, while its replicas
  drain; a read after the DELETE that finds it ``deleting`` (or gone by then) is not a
  use after free.
- a job's ``command[0]`` must name a program (not blank): a 400 naming ``command.0``;
- pods need an OpenSSH server (CI installs one, as for the pod tests) and, with
  ``jupyter``, JupyterLab on this machine: without them a pod create is refused with code
  ``unsupported`` whatever the body;
- a price version takes effect now or later, never in the past (usage is priced when it
  is recorded): an ``effective_at`` more than ``CLOCK_SKEW_S`` before the server's clock
  is refused with a 400 naming ``effective_at`` (a rule against the clock, which a schema
  cannot state);
- ``engine: vllm`` needs the vLLM engine environment (``make install-vllm``, which CI runs):
  without it a deployment create or update naming that engine is refused with code
  ``engine_not_installed`` whatever the body.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import httpx
import schemathesis

from neocloud.podrun import find_sshd
from neocloud.server.services.prices import CLOCK_SKEW_S
from neocloud.serving.engines.vllm import EngineNotInstalled, engine_python

OWN_TOKEN = os.environ.get("NEOCLOUD_FUZZ_TOKEN_NAME", "")
BASE_URL = os.environ.get("NEOCLOUD_FUZZ_URL", "")
TOKEN = os.environ.get("NEOCLOUD_FUZZ_TOKEN", "")


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if (case.method.upper() == "DELETE" and case.operation.path.endswith("/tokens/{name}")
            and case.path_parameters and case.path_parameters.get("name") == OWN_TOKEN):
        case.path_parameters["name"] = f"{OWN_TOKEN}-not-this-run"
    # The operator's revocation of any workspace's token: never this run's own.
    if (case.method.upper() == "DELETE" and case.operation.path.endswith("/tokens/{token}")
            and case.path_parameters and case.path_parameters.get("token") == OWN_TOKEN):
        case.path_parameters["token"] = f"{OWN_TOKEN}-not-this-run"


def _mixed_gpu_types(case: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    gpus = body.get("gpus")
    return isinstance(gpus, list) and len(
        {g.get("type") for g in gpus if isinstance(g, dict)}) > 1


def _same_mount_path(case: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    mounts = [m.get("path") for m in body.get("volumes") or [] if isinstance(m, dict)]
    return len(mounts) != len(set(mounts))


def _blank_program(case: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    command = body.get("command")
    return (isinstance(command, list) and bool(command) and isinstance(command[0], str)
            and not command[0].strip())


def _env_also_from_secret(case: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    env, refs = body.get("env"), body.get("secrets")
    return isinstance(env, dict) and isinstance(refs, dict) and bool(set(env) & set(refs))


def _effective_in_the_past(case: Any) -> bool:
    """Whether ``case``'s ``effective_at`` lies more than the skew allowance before now."""
    body = case.body if isinstance(case.body, dict) else {}
    raw = body.get("effective_at")
    if not isinstance(raw, str):
        return False
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return False
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (datetime.now(UTC) - at).total_seconds() > CLOCK_SKEW_S


def _deployment_deleting(case: Any) -> bool:
    """Whether the deployment ``case`` reads is ``deleting`` now, or already gone."""
    name = (case.path_parameters or {}).get("name")
    if not name or not BASE_URL:
        return False
    r = httpx.get(f"{BASE_URL}/api/v1/deployments/{name}",
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    return r.status_code == 404 or (r.status_code == 200 and r.json().get("status") == "deleting")


@schemathesis.hook
def filter_failure(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
    """``False`` drops a failure that is one of the refusals named above."""
    method, path = case.method.upper(), case.operation.path
    if (method == "POST" and path in ("/api/v1/nodes", "/api/v1/nodes/join")
            and response.status_code == 422 and _mixed_gpu_types(case)):
        return False
    if (response.status_code == 400 and '"param":"command.0"' in response.text.replace(" ", "")
            and _blank_program(case)):
        return False
    if (response.status_code == 400 and '"param":"period"' in response.text.replace(" ", "")
            and "is not a calendar date or month" in response.text):
        return False
    if (method == "POST" and path == "/api/v1/deployments" and response.status_code == 422
            and "max_surge and max_unavailable cannot both be 0" in response.text):
        return False
    if (path.startswith("/api/v1/metrics/") and response.status_code == 400
            and "buckets are kept for" in response.text):
        return False
    if (response.status_code == 400 and "two volumes are mounted at" in response.text
            and _same_mount_path(case)):
        return False
    if (path.startswith("/api/v1/deployments") and response.status_code == 422
            and '"param":"autoscaling' in response.text.replace(" ", "")):
        return False
    if (method == "PATCH" and path == "/api/v1/deployments/{name}"
            and response.status_code == 400 and '"param":"service"' in response.text
            and ("engine vllm" in response.text or "engine builtin" in response.text)):
        return False
    if (method == "PATCH" and path == "/api/v1/deployments/{name}"
            and response.status_code == 400 and '"param":"max_surge"' in response.text
            and "cannot both be 0" in response.text):
        return False
    if (method == "POST" and path == "/api/v1/prices" and response.status_code == 400
            and '"param":"effective_at"' in response.text.replace(" ", "")
            and "is in the past" in response.text and _effective_in_the_past(case)):
        return False
    if (response.status_code == 400 and "is set both in env and from a secret" in response.text
            and _env_also_from_secret(case)):
        return False
    if (type(failure).__name__ == "UseAfterFree" and path.startswith("/api/v1/deployments/{name}")
            and _deployment_deleting(case)):
        return False
    if (method == "POST" and path == "/api/v1/jobs" and response.status_code == 400
            and '"param":"command.0"' in response.text.replace(" ", "")):
        return False
    if (method == "POST" and path == "/api/v1/pods" and response.status_code == 400
            and '"unsupported"' in response.text
            and (find_sshd() is None or "JupyterLab is not installed" in response.text)):
        return False
    if (path.startswith("/api/v1/deployments") and response.status_code == 400
            and '"engine_not_installed"' in response.text and not _vllm_installed()):
        return False
    return True


def _vllm_installed() -> bool:
    try:
        engine_python()
    except EngineNotInstalled:
        return False
    return True
