"""Helpers shared by the built-in OpenAI-compatible services."""

from __future__ import annotations

import uuid
from typing import Any

from neocloud.errors import NotFound, Unsupported
from neocloud.serving.request import Request
from neocloud.serving.warmup import WARMUP_HEADER

#: The ``model`` named by the built-in services' declared warm-up inputs. The served name
#: is only known at run time (the deployment's name), so a warm-up call (header
#: ``X-Neocloud-Warmup: 1``, see :mod:`neocloud.serving.warmup`) naming this is a call for
#: the replica's own model; any other request naming it is refused like an unknown model.
WARMUP_MODEL = "neocloud-warmup"


def is_warmup(request: Request | None) -> bool:
    """Whether ``request`` is the runtime's warm-up call."""
    return request is not None and request.header(WARMUP_HEADER.decode()) == "1"


def check_model(service: Any, model: str, request: Request | None = None) -> str:
    """Refuse a request for a model this replica does not serve (OpenAI's 404); return
    the name to answer with (``model``, or the served name for a warm-up call naming
    :data:`WARMUP_MODEL`).

    Raises:
        NotFound: ``model`` is not among ``service.model_names()``.
    """
    names = service.model_names()
    if model == WARMUP_MODEL and is_warmup(request):
        return str(names[0])
    if model not in names:
        raise NotFound(
            f"model {model!r} is not served here (serving: {', '.join(names)})",
            param="model", code="model_not_found",
        )
    return model


#: Marks an option whose every value is harmless (metadata, service tier...).
ANY: Any = object()


def refuse(extra: dict[str, Any] | None, unsupported: dict[str, Any]) -> None:
    """Raise :class:`Unsupported` when ``extra`` sets an option this runtime does not do.

    ``unsupported`` maps option names to their harmless value (``None`` meaning "any
    false-like value is fine", :data:`ANY` any value at all).

    Raises:
        Unsupported: one option is set to something else.
    """
    for key, harmless in unsupported.items():
        value = (extra or {}).get(key)
        if harmless is ANY or value is None or value == harmless:
            continue
        if harmless is None and not value:
            continue
        raise Unsupported(f"{key} is not supported by this model server", param=key)


def refuse_unknown(extra: dict[str, Any] | None, known: dict[str, Any]) -> None:
    """Like :func:`refuse`, and any option not in ``known`` is refused too (a 400 naming
    it: an option the server does not know is never silently ignored).

    Raises:
        Unsupported: an unknown option, or a known one set to a value not served here.
    """
    for key in extra or {}:
        if key not in known:
            raise Unsupported(f"{key} is not a parameter this model server knows", param=key)
    refuse(extra, known)


def new_id(prefix: str) -> str:
    """An OpenAI-style object id such as ``chatcmpl-<32 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex}"

