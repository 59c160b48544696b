"""Secrets: workspace-scoped values injected into workloads as environment variables.

A secret's value is write-only on the API: it is accepted by ``PUT /secrets/{name}`` and
never sent back, listed, logged or put in an event or error message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

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

    value: str = Field(min_length=1, max_length=MAX_SECRET_BYTES)


class SecretOut(OutModel):
    """A secret without its value. ``version`` counts how often it was set (1 = new)."""

    name: str
    version: int
    created_at: datetime
    updated_at: datetime
