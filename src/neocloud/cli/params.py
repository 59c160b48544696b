"""Parsers of the CLI's compound option values; they raise ``typer.BadParameter`` so that
Click names the option and exits with code 2."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import typer
from pydantic import BaseModel, ValidationError

from neocloud.masking import MASK, looks_sensitive
from neocloud.models import GpuSpec

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_pairs(values: Sequence[str] | None, *, option: str) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}`` (split at the first ``=``).

    Raises:
        typer.BadParameter: an item has no ``=``, an empty key, or a key that is not an
            environment variable name (letters, digits, ``_``; not starting with a digit).
    """
    pairs: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(
                f"expected KEY=VALUE, got {item!r} (no '=')", param_hint=f"'{option}'"
            )
        if not _ENV_KEY.match(key):
            raise typer.BadParameter(
                f"{key!r} in {item!r} is not a valid name (letters, digits and '_', "
                "not starting with a digit)",
                param_hint=f"'{option}'",
            )
        pairs[key] = value
    return pairs


def parse_labels(values: Sequence[str] | None, *, option: str) -> dict[str, str]:
    """``["zone=a", "tier=gpu"]`` -> a dict; keys may hold ``.``, ``-`` and ``/`` too.

    Raises:
        typer.BadParameter: an item has no ``=`` or an empty key.
    """
    labels: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=f"'{option}'")
        labels[key] = value
    return labels


def host_port(value: str) -> tuple[str, int] | None:
    """``"HOST:PORT"`` -> ``(HOST, PORT)`` (TCP port 1..65535; the last ``:`` splits, so an
    IPv6 host keeps its colons), ``None`` when ``value`` does not read so."""
    host, sep, port = value.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        return None
    return host, int(port)


def parse_gpu(value: str, *, option: str = "--gpu") -> GpuSpec:
    """``TYPE:COUNT:MEMORY_MIB`` (e.g. ``H100:8:81559``) -> :class:`GpuSpec`.

    Raises:
        typer.BadParameter: wrong number of parts, a non-integer count or memory, or values
            outside the model's ranges.
    """
    parts = value.split(":")
    if len(parts) != 3:
        raise typer.BadParameter(
            f"expected TYPE:COUNT:MEMORY_MIB (e.g. H100:8:81559), got {value!r}",
            param_hint=f"'{option}'",
        )
    gpu_type, count, memory = parts
    try:
        count_n, memory_n = int(count), int(memory)
    except ValueError:
        raise typer.BadParameter(
            f"COUNT and MEMORY_MIB must be integers in {value!r}", param_hint=f"'{option}'"
        ) from None
    try:
        return GpuSpec(type=gpu_type, count=count_n, memory_mib=memory_n)
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise typer.BadParameter(
            f"{value!r}: {problem['loc'][0]}: {problem['msg']}", param_hint=f"'{option}'"
        ) from None


def check_fields(
    model: type[BaseModel], fields: Mapping[str, Any], options: Mapping[str, str]
) -> None:
    """Validate ``fields`` (``None`` values left out) against a request ``model`` before
    anything is sent, so that bad input is reported against the option that carried it.

    Args:
        model: the wire model of the request (e.g. ``DeploymentCreate``).
        fields: the request fields.
        options: field name -> command-line option (e.g. ``"replicas": "--replicas"``).

    Raises:
        typer.BadParameter: the first field that breaks the model, named by its option.
    """
    try:
        model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        hint = options.get(field)
        got = first.get("input")
        if any(looks_sensitive(str(part)) for part in first["loc"][1:]):
            got = MASK  # the value of a sensitive-looking variable is never echoed
        raise typer.BadParameter(
            f"{first['msg']} (got {got!r})" if field else first["msg"],
            param_hint=f"'{hint}'" if hint else None,
        ) from None
