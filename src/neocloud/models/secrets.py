"""Secrets: workspace-scoped values injected into workloads as environment variables.

A secret's value is write-only on the API: it is accepted by ``PUT /secrets/{name}`` and
never sent back, listed, logged or put in an event or error message.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field

from neocloud.masking import MASK, mask_env, sensitive_names
from neocloud.models.common import OutModel, WireModel

#: A secret name: letters, digits, '_', '-' and '.', starting with a letter; 1..63 chars
#: (``HF_TOKEN``, ``openai-key``).
SecretName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
]

#: Largest secret value accepted, in bytes of UTF-8 (64 KiB).
MAX_SECRET_BYTES = 64 * 1024


class SecretSet(WireModel):
    """Set (create or replace) a secret's value."""

    value: str = Field(min_length=1, max_length=MAX_SECRET_BYTES,
                       # no NUL: workloads get it as an environment variable (the service
                       # refuses one with a 400 naming ``value``; the schema says so too)
                       json_schema_extra={"pattern": "^[^\\x00]*$"})


class SecretOut(OutModel):
    """A secret without its value. ``version`` counts how often it was set (1 = new)."""

    name: str
    version: int
    created_at: datetime
    updated_at: datetime


#: The environment of a workload as the API shows it: the value of every variable whose
#: name looks sensitive (contains ``KEY``, ``TOKEN``, ``SECRET``, ``PASSWORD`` or
#: ``CREDENTIAL``, any case; see :mod:`neocloud.masking`) is replaced by ``***``.
MaskedEnv = Annotated[
    dict[str, str],
    AfterValidator(mask_env),
    Field(description="Environment variables; values of names that look sensitive "
                      f"(KEY, TOKEN, SECRET, PASSWORD, CREDENTIAL) are shown as {MASK!r}."),
]


def env_warnings(env: Iterable[str]) -> list[str]:
    """One warning per variable of a workload's plain ``env`` whose name looks sensitive:
    its value is stored as given (not encrypted) and shown masked; it belongs in a secret.

    The API returns these in the ``warnings`` field of a deployment, job or pod, and the
    CLI prints them when the spec is submitted.
    """
    out = []
    for name in sensitive_names(env):
        ref = name.lower().replace("_", "-")
        out.append(
            f"env {name} looks like a secret: it is stored unencrypted and shown as {MASK}; "
            f"keep it in a secret instead: `neocloud secret set {ref}`, then pass "
            f"`--secret {name}={ref}` instead of `--env {name}=...`")
    return out
