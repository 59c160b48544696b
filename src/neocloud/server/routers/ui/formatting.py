"""How the console prints numbers, quantities and commands (Jinja2 filters).

Numbers and invoice quantities follow :mod:`neocloud.formatting` (the CLI's rule too).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from jinja2 import Environment

from neocloud.formatting import num, quantity

__all__ = ["command", "install", "num", "quantity"]


def command(argv: Sequence[str]) -> str:
    """A command line quoted as a POSIX shell would need it (``shlex.join``)."""
    return shlex.join(argv)


def install(env: Environment) -> None:
    """Register the filters on a Jinja2 environment: ``num``, ``quantity``, ``command``."""
    env.filters.update(num=num, quantity=quantity, command=command)
