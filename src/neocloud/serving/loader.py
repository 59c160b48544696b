"""Find the service class a replica runs from its reference string.

Accepted references:

- a built-in name: ``embeddings`` (sentence-transformers) or ``chat`` (causal LM);
- ``package.module:Class`` (importable from ``sys.path``);
- ``path/to/file.py:Class`` (the file's folder is put first on ``sys.path`` so the file
  can import its neighbours).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

BUILTINS: dict[str, str] = {
    "embeddings": "neocloud.serving.builtin.embeddings:EmbeddingsService",
    "chat": "neocloud.serving.builtin.chat:ChatService",
}


def _load_file(path: str) -> Any:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"service file not found: {path}")
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    mod_name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def resolve_service(ref: str) -> tuple[type, str]:
    """The class named by ``ref`` and its default served name.

    The default name is the built-in's name, else the class's ``name`` attribute when the
    class sets one, else the class name in lower case.

    Raises:
        ValueError: ``ref`` is malformed, or the module or class does not exist.
    """
    target = BUILTINS.get(ref, ref)
    mod_part, sep, cls_name = target.rpartition(":")
    if not sep or not mod_part or not cls_name:
        raise ValueError(
            f"service {ref!r}: expected a built-in ({', '.join(BUILTINS)}), "
            "'package.module:Class' or 'path/to/file.py:Class'"
        )
    if mod_part.endswith(".py") or os.sep in mod_part or "/" in mod_part:
        module = _load_file(mod_part)
    else:
        try:
            module = importlib.import_module(mod_part)
        except ImportError as exc:
            raise ValueError(f"service {ref!r}: cannot import {mod_part!r}: {exc}") from exc
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"service {ref!r}: {mod_part!r} has no class {cls_name!r}")
    if ref in BUILTINS:
        return cls, ref
    own = vars(cls).get("name")
    return cls, own if isinstance(own, str) and own else cls_name.lower()
