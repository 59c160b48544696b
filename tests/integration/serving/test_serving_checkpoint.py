"""The cached conversion of the shipped SmolLM2 GGUF is a standard checkpoint: the tied
embedding is stored under ``model.embed_tokens.weight`` (once), and the folder loads in
transformers with the same greedy text as the GGUF itself. (Before: only
``lm_head.weight`` was saved, and vLLM generated token 0 forever from zero embeddings.)

The folder checked is the one every engine of the test session loads (the cache of
``NEOCLOUD_MODEL_CACHE``, converted once by whichever test needs it first)."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.slow


def test_gguf_conversion_is_a_standard_tied_checkpoint() -> None:
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neocloud.serving.textgen.loading import cache_root, default_gguf, model_folder

    folder = model_folder(None)
    assert os.path.dirname(folder) == cache_root()
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        names = set(f.keys())
        embed = f.get_tensor("model.embed_tokens.weight")
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert embed.abs().sum() > 0
    with open(os.path.join(folder, "config.json")) as fh:
        config = json.load(fh)
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config

    gguf_dir, gguf_name = os.path.split(default_gguf())
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    texts = []
    for source, kwargs in ((folder, {}), (gguf_dir, {"gguf_file": gguf_name})):
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs).eval()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=12, do_sample=False)
        texts.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert texts[0] == texts[1] and texts[0].strip()
