"""Wire types used by several resources."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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
    return value


#: A string passed to a process (environment, command line): no NUL characters, which
#: no operating system can carry there.
ProcessText = Annotated[str, AfterValidator(_no_nul)]


class Role(StrEnum):
    """Role of an API token inside its workspace.

    ``admin`` manages tokens and everything else; ``member`` creates and changes workloads;
    ``viewer`` reads only (and may call endpoints through the gateway).
    """

    admin = "admin"
    member = "member"
    viewer = "viewer"


class WireModel(BaseModel):
    """Base of every request model: unknown fields are an error, names are checked."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class OutModel(BaseModel):
    """Base of every response model (built from ORM rows too)."""

    model_config = ConfigDict(from_attributes=True)


class Page(OutModel, Generic[T]):
    """A list response: ``data`` holds the items, as in the OpenAI list object."""

    object: str = "list"
    data: list[T]
