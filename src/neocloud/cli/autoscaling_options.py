"""The autoscaling options of ``deploy`` and ``autoscale`` and their validation.

Both commands take ``--min``, ``--max``, ``--target-inflight``, ``--idle-to-zero``,
``--scale-up-delay`` and ``--scale-down-delay``; each sets one field of
``AutoscalingConfig``. An invalid combination is reported against the option that carries
the field the model rejects, in the words of the command line (``--idle-to-zero``, not
``scale_to_zero_delay_s``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import typer
from pydantic import ValidationError

from neocloud.models.autoscaling import AutoscalingConfig

_FIELDS = AutoscalingConfig.model_fields

#: Default seconds without a request before an autoscaled deployment goes to 0 replicas.
IDLE_TO_ZERO_DEFAULT_S = float(_FIELDS["scale_to_zero_delay_s"].default)
#: Default seconds a lower count must be asked for before a scale-down.
SCALE_DOWN_DELAY_DEFAULT_S = float(_FIELDS["scale_down_delay_s"].default)
#: Default seconds a higher count must be asked for before a scale-up (outside a burst).
SCALE_UP_DELAY_DEFAULT_S = float(_FIELDS["scale_up_delay_s"].default)
#: Default stable window: the policy never goes to zero while it holds any load.
WINDOW_DEFAULT_S = float(_FIELDS["window_s"].default)

#: Field of ``AutoscalingConfig`` -> the option that sets it.
OPTIONS: dict[str, str] = {
    "min_replicas": "--min",
    "max_replicas": "--max",
    "target": "--target-inflight",
    "scale_up_delay_s": "--scale-up-delay",
    "scale_down_delay_s": "--scale-down-delay",
    "scale_to_zero_delay_s": "--idle-to-zero",
}

# field names written in the model's messages, replaced by their options ("target" is
# left alone: it is also a plain word of the messages)
_NAMES = re.compile(r"\b(" + "|".join(f for f in OPTIONS if "_" in f) + r")\b")


def idle_to_zero_option() -> Any:
    """The ``--idle-to-zero SECONDS`` option (``None`` when not given)."""
    return typer.Option(
        None, "--idle-to-zero", min=0, max=86400, metavar="SECONDS",
        help="With --min 0: seconds without any request (none arriving, in flight or "
        "held), counted from the last one, before going to 0 replicas (default "
        f"{IDLE_TO_ZERO_DEFAULT_S:g} s; at least --scale-down-delay; never sooner than "
        f"the {WINDOW_DEFAULT_S:g} s load window has emptied).")


def scale_down_delay_option() -> Any:
    """The ``--scale-down-delay SECONDS`` option (``None`` when not given)."""
    return typer.Option(
        None, "--scale-down-delay", min=0, max=86400, metavar="SECONDS",
        help="Seconds a lower replica count must be asked for before scaling down, and "
        f"between two scale-downs (default {SCALE_DOWN_DELAY_DEFAULT_S:g} s).")


def scale_up_delay_option() -> Any:
    """The ``--scale-up-delay SECONDS`` option (``None`` when not given)."""
    return typer.Option(
        None, "--scale-up-delay", min=0, max=3600, metavar="SECONDS",
        help="Seconds a higher replica count must be asked for before scaling up; a burst "
        f"scales up at once (default {SCALE_UP_DELAY_DEFAULT_S:g} s).")


def given_fields(*, min_replicas: int | None = None, max_replicas: int | None = None,
                 target_inflight: float | None = None, idle_to_zero_s: float | None = None,
                 scale_up_delay_s: float | None = None,
                 scale_down_delay_s: float | None = None) -> dict[str, float]:
    """The ``AutoscalingConfig`` fields of the options given (empty when none is)."""
    values: dict[str, float | None] = {
        "min_replicas": min_replicas, "max_replicas": max_replicas, "target": target_inflight,
        "scale_to_zero_delay_s": idle_to_zero_s, "scale_up_delay_s": scale_up_delay_s,
        "scale_down_delay_s": scale_down_delay_s,
    }
    return {k: v for k, v in values.items() if v is not None}


def to_config(fields: Mapping[str, Any]) -> AutoscalingConfig:
    """``fields`` (missing ones take their defaults) as a validated config.

    Raises:
        typer.BadParameter: the first rule broken, named by the option of its field.
    """
    try:
        return AutoscalingConfig.model_validate(dict(fields))
    except ValidationError as exc:
        raise option_error(exc) from None


def option_error(exc: ValidationError) -> typer.BadParameter:
    """The first error of an ``AutoscalingConfig`` validation, in command-line terms."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    msg = str(first["msg"]).removeprefix("Value error, ")
    msg = _NAMES.sub(lambda m: OPTIONS[m.group(1)], msg)
    hint = OPTIONS.get(field)
    return typer.BadParameter(msg, param_hint=f"'{hint}'" if hint else None)
