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
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

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


MAX_ARG_STRLEN = 32 * 4096
"""Bytes one string of a new process's command line or environment may hold, its closing
NUL included (for a variable the whole ``NAME=value``): Linux's ``MAX_ARG_STRLEN``,
``PAGE_SIZE * 32`` (``include/uapi/linux/binfmts.h``; 4 KiB pages), which ``execve``
checks string by string (``copy_strings`` in ``fs/exec.c``). A longer string makes every
start fail with ``E2BIG``, "[Errno 7] Argument list too long"."""

ARG_MAX_DEFAULT = 2 * 1024 * 1024
"""Bytes the whole command line and environment of a new process may hold on Linux by
default: a quarter of the default 8 MiB stack limit (``ulimit -s``; ``bprm_stack_limits``
in ``fs/exec.c``, which also reports it as ``getconf ARG_MAX``), each string counted with
its NUL plus one pointer (:data:`ARG_POINTER_BYTES`)."""

ARG_POINTER_BYTES = 8
"""Bytes of the pointer ``execve`` stores for each string (64-bit)."""

MAX_ENV_TOTAL_BYTES = ARG_MAX_DEFAULT // 2
"""Bytes the ``env`` of one workload may hold in all, counted as ``execve`` counts them
(``NAME=value``, its NUL and a pointer per variable): half of :data:`ARG_MAX_DEFAULT`,
which leaves the other half to the command line, the variables neocloud and the backend
add and the secrets injected at start."""

MAX_ARGV_TOTAL_BYTES = ARG_MAX_DEFAULT // 4
"""Bytes the command line of one workload may hold in all (each argument, its NUL and a
pointer): a quarter of :data:`ARG_MAX_DEFAULT`."""


def arg_bytes(text: str) -> int:
    """Bytes ``text`` takes among a new process's strings: UTF-8, its NUL included."""
    return len(text.encode("utf-8")) + 1


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\x00) characters")
    try:
        size = arg_bytes(value)
    except UnicodeEncodeError as e:
        # JSON may escape a lone surrogate ("\ud800"); no process, file or database
        # column can carry one (it reached the database and the answer as a 500).
        raise ValueError(f"is not valid Unicode: a lone surrogate at character {e.start}"
                         ) from None
    if size > MAX_ARG_STRLEN:
        # Accepted once: the workload then failed every start, "Argument list too long".
        raise ValueError(f"is {size - 1} bytes long; one command-line or environment string "
                         f"of a process may hold at most {MAX_ARG_STRLEN - 1} bytes (Linux "
                         "MAX_ARG_STRLEN)")
    return value


def _env_fits(env: dict[str, str]) -> dict[str, str]:
    """``env`` when a process can start with it: each ``NAME=value`` within
    :data:`MAX_ARG_STRLEN` (the error names ``env.NAME``) and all of them within
    :data:`MAX_ENV_TOTAL_BYTES`."""
    total = 0
    for name, value in env.items():
        size = arg_bytes(f"{name}={value}")
        if size > MAX_ARG_STRLEN:
            raise ValidationError.from_exception_data("env", [InitErrorDetails(
                type=PydanticCustomError(
                    "env_entry_too_long",
                    "{name}=VALUE is {size} bytes with its NUL; one environment string "
                    "of a process may hold at most {limit} (Linux MAX_ARG_STRLEN)",
                    {"name": name, "size": size, "limit": MAX_ARG_STRLEN}),
                loc=(name,), input=f"<{len(value)} characters>")])
        total += size + ARG_POINTER_BYTES
    if total > MAX_ENV_TOTAL_BYTES:
        raise PydanticCustomError(
            "env_too_large",
            "the environment takes {total} bytes of a process's argument space (each "
            "NAME=value, its NUL and an {pointer}-byte pointer); at most {limit} are allowed "
            "(half of Linux's default ARG_MAX of {arg_max}); pass large data in a file "
            "(a volume) instead",
            {"total": total, "pointer": ARG_POINTER_BYTES, "limit": MAX_ENV_TOTAL_BYTES,
             "arg_max": ARG_MAX_DEFAULT})
    return env


def _argv_fits(argv: list[str]) -> list[str]:
    """``argv`` when its arguments fit :data:`MAX_ARGV_TOTAL_BYTES` together."""
    total = sum(arg_bytes(a) + ARG_POINTER_BYTES for a in argv)
    if total > MAX_ARGV_TOTAL_BYTES:
        raise PydanticCustomError(
            "command_too_large",
            "the command line takes {total} bytes of a process's argument space (each "
            "argument, its NUL and an {pointer}-byte pointer); at most {limit} are allowed",
            {"total": total, "pointer": ARG_POINTER_BYTES, "limit": MAX_ARGV_TOTAL_BYTES})
    return argv


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
#: naming the field; the schema states the rule). Sizes as a process can take them
#: (:func:`_env_fits`): a 422 naming ``env.NAME`` for a variable over
#: :data:`MAX_ARG_STRLEN`, naming ``env`` for more than :data:`MAX_ENV_TOTAL_BYTES` in all.
Env = Annotated[dict[str, ProcessText], AfterValidator(_env_fits), WithJsonSchema({
    "type": "object", "propertyNames": _ENV_KEYS, "additionalProperties": PROCESS_TEXT_SCHEMA,
})]

#: A command line run as is: each argument a :data:`ProcessText`, all of them within
#: :data:`MAX_ARGV_TOTAL_BYTES` (422 naming the field).
ProcessArgs = Annotated[list[ProcessText], AfterValidator(_argv_fits)]

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
