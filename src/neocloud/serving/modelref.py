"""Model references given with ``--model``.

- ``None``: the built-in service's default model (shipped in a Python package);
- ``hf:<org>/<name>``: a Hugging Face Hub model id, loaded with the usual hub code (its
  cache, ``HF_HUB_OFFLINE`` and ``HF_HOME`` apply);
- a local path: a model folder (or, for text generation, a ``.gguf`` file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: ``kind`` and the hub id or absolute path in ``value``."""

    kind: Literal["default", "hub", "local"]
    value: str = ""


def parse_model_ref(ref: str | None) -> ModelRef:
    """Parse ``ref`` (see the module docstring).

    Raises:
        ValueError: an ``hf:`` reference without ``org/name``, or a path that does not exist.
    """
    if ref is None or ref == "":
        return ModelRef("default")
    if ref.startswith("hf:"):
        repo = ref[3:]
        if repo.count("/") != 1 or repo.startswith("/") or repo.endswith("/"):
            raise ValueError(f"model {ref!r}: expected hf:<org>/<name>")
        return ModelRef("hub", repo)
    path = os.path.abspath(os.path.expanduser(ref))
    if not os.path.exists(path):
        raise ValueError(f"model {ref!r}: no such folder or file (use hf:<org>/<name> for hub "
                         "models)")
    return ModelRef("local", path)
