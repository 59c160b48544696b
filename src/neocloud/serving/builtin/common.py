"""Helpers shared by the built-in OpenAI-compatible services."""

from __future__ import annotations

import os
import uuid
from typing import Any

from neocloud.errors import NotFound, Unsupported


def check_model(service: Any, model: str) -> None:
    """Refuse a request for a model this replica does not serve (OpenAI's 404).

    Raises:
        NotFound: ``model`` is not among ``service.model_names()``.
    """
    names = service.model_names()
    if model not in names:
        raise NotFound(
            f"model {model!r} is not served here (serving: {', '.join(names)})",
            param="model", code="model_not_found",
        )


def refuse(extra: dict[str, Any] | None, unsupported: dict[str, Any]) -> None:
    """Raise :class:`Unsupported` when ``extra`` sets an option this runtime does not do.

    ``unsupported`` maps option names to their harmless value (``None`` meaning "any
    false-like value is fine").

    Raises:
        Unsupported: one option is set to something else.
    """
    for key, harmless in unsupported.items():
        value = (extra or {}).get(key)
        if value is None or value == harmless or (harmless is None and not value):
            continue
        raise Unsupported(f"{key} is not supported by this model server", param=key)


def new_id(prefix: str) -> str:
    """An OpenAI-style object id such as ``chatcmpl-<32 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def env_int(name: str, default: int) -> int:
    """Integer setting from the environment (``default`` when unset or empty)."""
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    """Float setting from the environment (``default`` when unset or empty)."""
    value = os.environ.get(name)
    return float(value) if value else default
