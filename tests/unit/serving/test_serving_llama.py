"""The engine's fast Llama forward (:mod:`neocloud.serving.textgen.llama`) against the
transformers forward it replaces, over the same right-aligned KV cache: the logits of a
left-padded prefill and of the decode steps after it (float32: within 1e-4; bfloat16: the
same greedy token within bfloat16 rounding), from plain or already packed weights; models
it does not implement fall back to the transformers forward (a 2-layer random Llama with
grouped-query attention, the tests' character tokenizer)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from neocloud.serving.textgen.engine import EngineConfig, SamplingParams, TextGenerator, run_to_end
from neocloud.serving.textgen.kvcache import SlotCache
from neocloud.serving.textgen.linear import can_pack, pack_linears
from neocloud.serving.textgen.llama import LlamaForward, build_fast_forward, unsupported_reason


class CharTokenizer:
    """Token i is chr(ord('a') + i); token 25 ('z') is EOS."""

    eos_token_id = 25
    pad_token_id = 0
    chat_template = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i) for i in ids if not (skip_special_tokens and i == 25))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) - 97 for c in text]


DIMS: dict[str, Any] = dict(
    vocab_size=26, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    eos_token_id=25, bos_token_id=0)


def tiny_llama(**config: Any) -> Any:
    """A 2-layer random Llama (grouped-query attention: 4 heads, 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**DIMS, **config})).eval()

HISTORIES = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]  # left-padded to 7


def _logits(model: Any, forward: Any, histories: list[list[int]], steps: int = 4
            ) -> list[torch.Tensor]:
    """Last-position logits of a left-padded prefill of ``histories`` and of ``steps - 1``
    greedy decode steps after it, laid out as the engine lays them out; ``forward`` is
    None for the transformers model."""
    cfg = model.config
    cache = SlotCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                      next(model.parameters()).dtype, "cpu")
    longest, rows = max(map(len, histories)), len(histories)
    cache.reserve(rows, longest, steps)
    cache.add_rows([cache.t - len(h) for h in histories])
    cache.set_window(0, rows, cache.t - longest)
    ids = torch.tensor([[0] * (longest - len(h)) + h for h in histories])
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            q = ids.shape[1]
            if forward is None:
                logits = model(input_ids=ids, attention_mask=cache.mask(q),
                               position_ids=cache.positions(q), cache=cache, use_cache=True,
                               logits_to_keep=1).logits[:, -1]
            else:
                logits = forward(ids, cache.mask(q), cache.positions(q), cache)
            out.append(logits.float())
            cache.t = cache._c0 + q
            cache.set_window(0, rows, cache.t)
            ids = logits.argmax(-1)[:, None]
    return out


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def test_float32_logits_equal_the_transformers_forward() -> None:
    model = tiny_llama()
    fast = LlamaForward(model, 64)
    ref, got = _logits(model, None, HISTORIES), _logits(model, fast, HISTORIES)
    assert _max_diff(ref, got) < 1e-4
    assert fast.packed == 0  # float32 products stay plain (batch invariance)


def test_a_static_rope_scaling_is_honoured() -> None:
    model = tiny_llama(rope_parameters={"rope_type": "linear", "factor": 4.0,
                                        "rope_theta": 500.0})
    assert unsupported_reason(model) is None
    fast = LlamaForward(model, 64)
    assert _max_diff(_logits(model, None, HISTORIES), _logits(model, fast, HISTORIES)) < 1e-4
    # the scaling matters: the plain frequencies give other logits
    plain = tiny_llama()
    assert _max_diff(_logits(plain, None, HISTORIES), _logits(model, None, HISTORIES)) > 1e-3


@pytest.mark.skipif(not can_pack(torch.bfloat16, "cpu"), reason="torch built without oneDNN")
def test_bfloat16_logits_agree_from_plain_or_packed_weights() -> None:
    plain = tiny_llama().to(torch.bfloat16)
    ref = _logits(plain, None, HISTORIES)
    fast = LlamaForward(plain, 64)
    assert fast.packed == 2 * 4 + 1
    got = _logits(plain, fast, HISTORIES)
    # a few bfloat16 steps of logits of magnitude about 1, the same greedy tokens
    assert _max_diff(ref, got) < 0.05
    assert all(torch.equal(x.argmax(-1), y.argmax(-1)) for x, y in zip(ref, got, strict=True))
    packed = tiny_llama().to(torch.bfloat16)
    pack_linears(packed, "cpu")  # an earlier engine packed the model: weights read back
    again = _logits(packed, LlamaForward(packed, 64), HISTORIES)
    assert all(torch.equal(x, y) for x, y in zip(got, again, strict=True))


def _forced_decode(model: Any, forward: Any, histories: list[list[int]], steps: int
                   ) -> list[torch.Tensor]:
    """Logits of ``steps`` decode steps after a left-padded prefill of ``histories``, every
    row fed token ``1 + step`` (the same inputs whatever the logits: no greedy feedback)."""
    cfg = model.config
    cache = SlotCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                      next(model.parameters()).dtype, "cpu")
    longest, rows = max(map(len, histories)), len(histories)
    cache.reserve(rows, longest, steps + 1)
    cache.add_rows([cache.t - len(h) for h in histories])
    cache.set_window(0, rows, cache.t - longest)
    ids = torch.tensor([[0] * (longest - len(h)) + h for h in histories])
    out = []
    with torch.inference_mode():
        forward(ids, cache.mask(longest), cache.positions(longest), cache)
        for step in range(steps):
            cache.set_window(0, rows, cache.t)
            ids = torch.full((rows, 1), 1 + step)
            out.append(forward(ids, cache.mask(1), cache.positions(1), cache).float())
            cache.t += 1
    return out


def test_the_decode_attention_as_batched_products_gives_sdpas_logits() -> None:
    """Rows of 60-100 tokens in a 128-column cache: the decode steps attend through two
    batched products over the buffers' whole width (``_dense_attention``), whose logits
    equal SDPA's over the window (float32 to 1e-5, measured 9e-8; bfloat16 within a
    rounding step or two of logits of magnitude about 0.3, measured 0.002), padded rows
    included."""
    rows = [[(7 * i) % 25 for i in range(100)], [3, 4, 5] * 20, [9, 1] * 40]
    for dtype, bound in ((torch.float32, 1e-5), (torch.bfloat16, 0.01)):
        model = tiny_llama(max_position_embeddings=256).to(dtype)
        fast = LlamaForward(model, 256)
        calls: list[int] = []
        dense_attention = fast._dense_attention

        def counted(*args: Any, calls: list[int] = calls, inner: Any = dense_attention
                    ) -> torch.Tensor:
            calls.append(1)
            return inner(*args)

        fast._dense_attention = counted  # type: ignore[method-assign]
        dense = _forced_decode(model, fast, rows, steps=5)
        assert len(calls) == 5 * 2  # every decode step, every layer
        fast.dense_decode = False
        sdpa = _forced_decode(model, fast, rows, steps=5)
        assert len(calls) == 10
        assert _max_diff(dense, sdpa) < bound


@pytest.mark.slow
def test_the_compiled_forward_gives_the_fast_forwards_logits() -> None:
    from neocloud.serving.textgen.compiled import compile_forward

    model = tiny_llama()
    fast = LlamaForward(model, 64)
    compiled = compile_forward(fast, warm_rows=(3,), warm_context=7)  # minutes on 2 cores
    assert _max_diff(_logits(model, fast, HISTORIES), _logits(model, compiled, HISTORIES)
                     ) < 1e-5


def _engine_texts(model: Any, fast_forward: bool) -> tuple[TextGenerator, list[Any], list[Any]]:
    g = TextGenerator(model, CharTokenizer(), config=EngineConfig(
        max_num_seqs=4, kv_budget_tokens=8 * 256, fast_forward=fast_forward))
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    greedy = [SamplingParams(max_tokens=m, temperature=0) for m in (12, 7, 20)]

    async def main() -> tuple[list[Any], list[Any]]:
        alone = [await run_to_end(g, p, s) for p, s in zip(prompts, greedy, strict=True)]
        together = await asyncio.gather(*[run_to_end(g, p, s) for p, s in
                                          zip(prompts, greedy, strict=True)])
        return alone, list(together)

    try:
        alone, together = asyncio.run(main())
    finally:
        g.close()
    return g, alone, together


def test_the_engine_runs_llama_through_the_fast_forward_or_transformers_alike() -> None:
    fast, alone, together = _engine_texts(tiny_llama(), True)
    slow, alone_tf, together_tf = _engine_texts(tiny_llama(), False)
    assert fast.fast is not None and slow.fast is None
    assert together == alone and together_tf == alone_tf  # float32: batched == alone
    assert alone == alone_tf  # the same greedy text either way


def test_models_it_does_not_implement_fall_back_to_transformers() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dynamic = tiny_llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                          "rope_theta": 10000.0})
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(**DIMS)).eval()
    gelu = tiny_llama(hidden_act="gelu")
    for model, why in ((dynamic, "rope type 'dynamic'"), (qwen, "model type 'qwen2'"),
                       (gelu, "activation 'gelu'")):
        reason = unsupported_reason(model)
        assert reason is not None and why in reason
        assert build_fast_forward(model, 64) is None
        with pytest.raises(ValueError, match=why):
            LlamaForward(model, 64)
    g, alone, together = _engine_texts(qwen, True)
    assert g.fast is None  # the transformers forward ran, batched == alone in float32
    assert together == alone and all(t[2] >= 1 for t in alone)


def test_releasing_the_models_layers_keeps_the_engines_text() -> None:
    """A replica keeps one copy of the weights: the engine's forward holds the fused (and,
    in bfloat16 on CPU, packed) copies, so the transformers layers are dropped; the text
    stays the same, and an engine on the transformers forward keeps its layers."""
    model = tiny_llama()
    before = _engine_texts(model, True)[1]
    g = TextGenerator(model, CharTokenizer(), config=EngineConfig(
        max_num_seqs=4, kv_budget_tokens=8 * 256))
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers.parameters())
    try:
        assert g.release_model_layers() == layer_bytes > 0
        assert len(model.model.layers) == 0
        after = [asyncio.run(run_to_end(g, p, SamplingParams(max_tokens=m, temperature=0)))
                 for p, m in (([1, 2, 3], 12), ([4, 5, 6, 7, 8, 9], 7), ([10], 20))]
    finally:
        g.close()
    assert after == before
    slow = TextGenerator(tiny_llama(), CharTokenizer(), config=EngineConfig(
        max_num_seqs=4, kv_budget_tokens=8 * 256, fast_forward=False))
    try:
        assert slow.release_model_layers() == 0 and len(slow.model.model.layers) == 2
    finally:
        slow.close()
