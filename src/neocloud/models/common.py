"""Wire types used by several resources."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from types import UnionType
from typing import Annotated, Any, Generic, TypeVar, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

T = TypeVar("T")

#: A resource name: a DNS label (lower-case letters, digits, '-'; 1..63 characters,
#: starting with a letter). Names appear in URLs and in the OpenAI ``model`` field.
Name = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"),
]

#: A shape or GPU type name such as ``gpu.h100x8`` (letters, digits, '.', '_', '-').
ShapeName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
]


#: The largest integer a 32-bit database column holds (PostgreSQL ``INTEGER``); every
#: amount on the wire is bounded by it so an oversized number is a 422, not a 500.
INT32_MAX = 2**31 - 1

#: A non-negative amount that fits the database (millicores, MiB, counts).
Amount = Annotated[int, Field(ge=0, le=INT32_MAX)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\x00) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        # JSON may escape a lone surrogate ("\ud800"); no process, file or database
        # column can carry one (it reached the database and the answer as a 500).
        raise ValueError(f"is not valid Unicode: a lone surrogate at character {e.start}"
                         ) from None
    return value


#: JSON Schema of :data:`ProcessText` (the rule it checks, for the OpenAPI schema).
PROCESS_TEXT_SCHEMA: dict[str, Any] = {"type": "string", "pattern": "^[^\\u0000]*$"}

#: A string passed to a process (environment, command line): no NUL characters, which
#: no operating system can carry there.
ProcessText = Annotated[str, AfterValidator(_no_nul), WithJsonSchema(PROCESS_TEXT_SCHEMA)]

#: A POSIX environment variable name (the control plane checks env and secret keys).
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

#: Variables the platform sets itself; a workload may not set them.
RESERVED_ENV = frozenset({
    "CUDA_VISIBLE_DEVICES", "NEOCLOUD_SERVED_MODEL_NAME", "NEOCLOUD_WORKLOAD_ID", "PORT",
})

#: A secret name: a letter, then letters, digits, ``_``, ``-``, ``.``; 1..63 characters.
SECRET_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"

_ENV_KEYS: dict[str, Any] = {"pattern": ENV_NAME_PATTERN, "not": {"enum": sorted(RESERVED_ENV)}}

#: Environment of a workload, ``{NAME: value}`` (names checked by the control plane: 400
#: naming the field; the schema states the rule).
Env = Annotated[dict[str, ProcessText], WithJsonSchema({
    "type": "object", "propertyNames": _ENV_KEYS, "additionalProperties": PROCESS_TEXT_SCHEMA,
})]

#: Secret references of a workload, ``{ENV_NAME: secret name}``.
SecretRefs = Annotated[dict[str, str], WithJsonSchema({
    "type": "object", "propertyNames": _ENV_KEYS,
    "additionalProperties": {"type": "string", "pattern": SECRET_NAME_PATTERN},
})]


class Role(StrEnum):
    """Role of an API token inside its workspace.

    ``admin`` manages tokens and everything else; ``member`` creates and changes workloads;
    ``viewer`` reads only (and may call endpoints through the gateway).
    """

    admin = "admin"
    member = "member"
    viewer = "viewer"


def _scalar_kind(tp: Any) -> Any:
    """What a field's type expects of JSON: ``bool``, ``"number"``, ``datetime``,
    ``("list", kind)``, ``("dict", kind)`` or ``None`` (anything else: strings, enums,
    models, ...)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _scalar_kind(get_args(tp)[0])
    if origin in (Union, UnionType):
        kinds = {_scalar_kind(a) for a in get_args(tp) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (list, tuple, set, frozenset):
        args = get_args(tp)
        inner = _scalar_kind(args[0]) if args else None
        return ("list", inner) if inner is not None else None
    if origin is dict:
        args = get_args(tp)
        inner = _scalar_kind(args[1]) if len(args) == 2 else None
        return ("dict", inner) if inner is not None else None
    if tp is bool:
        return bool
    if tp in (int, float):
        return "number"
    if tp is datetime:
        return datetime
    return None


def _coerced(kind: Any, value: Any) -> str | None:
    """Why ``value`` would only fit ``kind`` by coercion (``None``: it fits as it is)."""
    if kind is bool:
        return None if value is None or isinstance(value, bool) else "a boolean (true or false)"
    if kind is datetime:
        ok = value is None or isinstance(value, str | datetime)
        return None if ok else "an ISO 8601 date and time, not a number"
    if kind == "number":
        if isinstance(value, bool):
            return "a number, not a boolean"
        return "a number, not a string" if isinstance(value, str) else None
    if isinstance(kind, tuple) and kind[0] == "list" and isinstance(value, list):
        return next((w for w in (_coerced(kind[1], v) for v in value) if w), None)
    if isinstance(kind, tuple) and kind[0] == "dict" and isinstance(value, dict):
        return next((w for w in (_coerced(kind[1], v) for v in value.values()) if w), None)
    return None


class WireModel(BaseModel):
    """Base of every request model: unknown fields are an error, names are checked, and
    JSON types are taken as they are: a boolean field takes only ``true``/``false`` (not
    ``0``/``1`` or ``"yes"``) and a number field refuses ``true``/``false`` and strings
    such as ``"3"``, and a time field takes only an ISO 8601 string (not a number of Unix
    seconds), in nested lists and maps too (pydantic's lax mode would coerce them).
    Query parameters, which are strings on the wire, are not request models."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    @field_validator("*", mode="before")
    @classmethod
    def _json_types(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        want = _coerced(_scalar_kind(field.annotation), value)
        if want is not None:
            raise PydanticCustomError("strict_type", "Input should be {want}", {"want": want})
        return value


class OutModel(BaseModel):
    """Base of every response model (built from ORM rows too)."""

    model_config = ConfigDict(from_attributes=True)


class Page(OutModel, Generic[T]):
    """A list response: ``data`` holds the items, as in the OpenAI list object."""

    object: str = "list"
    data: list[T]
