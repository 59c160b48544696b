"""A fast forward for Llama-layout causal LMs, over the engine's right-aligned KV cache.

The transformers forward of a Llama model runs, per layer, seven matrix products
(q, k, v, o, gate, up, down) and a few dozen small operators (two RMSNorms of five
operators each, the rotary embedding computed from the position ids at every call, the
attention's reshapes); on CPU each operator is an OpenMP parallel region, and a decode step
of SmolLM2-135M is a few hundred of them. :class:`LlamaForward` computes the same function
with fewer, larger operators, reading the weights of the loaded transformers model (no
checkpoint of its own):

* q, k and v are one product (their weights concatenated), gate and up one product, so
  four products per layer instead of seven; on a bfloat16 CPU model every product is a
  :class:`~neocloud.serving.textgen.linear.PackedLinear` (weights reordered for oneDNN
  once), with the residual sum of the o and down products fused into the product;
* RMSNorm is ``torch.nn.functional.rms_norm`` (one operator), SiLU-and-multiply two;
* the rotary embedding (Su et al., "RoFormer", 2021, as Llama applies it: the two halves
  of each head rotated, ``x cos + rotate_half(x) sin``) reads a cos/sin table computed
  once from the model's own inverse frequencies (``rotary_emb.inv_freq``, so the
  ``rope_theta`` and static scaling of the config are honoured) and indexed by the
  position ids; q and k are rotated together. Rope types whose frequencies change with
  the sequence length (``dynamic``, ``longrope``) are not implemented: such a model runs
  the transformers forward (:func:`unsupported_reason`);
* keys and values are written into the :class:`~neocloud.serving.textgen.kvcache.SlotCache`
  and attended with ``scaled_dot_product_attention`` over the window with the cache's
  boolean mask; grouped-query attention attends on the key/value heads (a decode query's
  heads of one group become that group's query rows, a prefill repeats the key/value
  heads), as transformers does. A decode step attends instead through two batched
  products over the buffers' whole width (:meth:`LlamaForward._dense_attention`: no copy
  of the window, softmax in float32 with an additive mask built once per step), unless
  the buffers are more than :data:`DENSE_MAX_COLUMNS_RATIO` times wider than the window:
  on CPU, SDPA's flash kernel took about 0.5 ms a call at 32 rows against about 0.13 ms
  for the two products (1 thread), a fifth of a decode step over 30 layers;
* the LM head runs on the last position of each row only (the only logits the engine
  samples from), and the last layer's attention output and MLP on that position only
  (the other positions' keys and values, all that later steps need, are already written).

Numerics: in float32 the logits equal the transformers forward's to about 1e-5 (tests
bound them by 1e-4) and a row's result does not depend on the rows beside it (the engine's
batched == alone tests run through this forward); in bfloat16 they agree within bfloat16
rounding with the same greedy token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from neocloud.serving.textgen.linear import PackedLinear, can_pack

log = logging.getLogger("neocloud.serving")

__all__ = ["LlamaForward", "STATIC_ROPE_TYPES", "build_fast_forward", "unsupported_reason"]

#: The decode attention runs as batched products over the KV buffers' whole width
#: (:meth:`LlamaForward._dense_attention`) when that width is at most this many times the
#: columns attended over; otherwise (a buffer grown by a long prompt) it runs SDPA over
#: the window.
DENSE_MAX_COLUMNS_RATIO = 3

#: Model types whose layout this forward implements (``config.model_type``).
MODEL_TYPES = ("llama",)
#: Rope types whose inverse frequencies are fixed at load (read from the model's
#: ``rotary_emb``); the others change with the sequence length and are not implemented.
STATIC_ROPE_TYPES = ("default", "linear", "llama3")


class _Plain(torch.nn.Module):
    """``y = x W^T + b`` with ``torch.nn.functional.linear`` (float32, or no oneDNN)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def add_forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + other


def _rope_type(cfg: Any) -> str:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return str(params.get("rope_type", params.get("type", "default")) or "default")


def unsupported_reason(model: Any) -> str | None:
    """Why :class:`LlamaForward` cannot run ``model`` (``None``: it can): not a Llama
    model type, an activation other than SiLU, a rope type outside
    :data:`STATIC_ROPE_TYPES`, or modules missing from the expected layout."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in MODEL_TYPES:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {MODEL_TYPES}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} is not silu"
    rope = _rope_type(cfg)
    if rope not in STATIC_ROPE_TYPES:
        return f"rope type {rope!r} is not one of {STATIC_ROPE_TYPES}"
    base = getattr(model, "model", None)
    try:
        layer = base.layers[0]  # type: ignore[union-attr]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(layer.self_attn, name)
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(layer.mlp, name)
        layer.input_layernorm.weight  # noqa: B018  (an attribute check)
        base.norm.weight  # type: ignore[union-attr]  # noqa: B018
        base.rotary_emb.inv_freq  # type: ignore[union-attr]  # noqa: B018
        model.lm_head  # noqa: B018
    except (AttributeError, IndexError, TypeError) as exc:
        return f"not the Llama module layout ({exc})"
    return None


def _weight(mod: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plain weight and bias of a linear layer, packed or not."""
    if isinstance(mod, PackedLinear):
        return mod.weight_matrix(), mod.bias
    return mod.weight.detach(), None if mod.bias is None else mod.bias.detach()


def _cat_bias(biases: list[torch.Tensor | None], weights: list[torch.Tensor]
              ) -> torch.Tensor | None:
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else w.new_zeros(w.shape[0])
                      for b, w in zip(biases, weights, strict=True)])


@dataclass
class _Layer:
    ln1: torch.Tensor
    qkv: Any
    o: Any
    ln2: torch.Tensor
    gate_up: Any
    down: Any


class LlamaForward:
    """The forward of a Llama-layout causal LM for the engine (see the module docstring).

    Args:
        model: a transformers Llama causal LM (:func:`unsupported_reason` is ``None``),
            its linear layers plain or already packed.
        max_positions: rows of the rotary table (positions 0 .. ``max_positions - 1``).

    Raises:
        ValueError: the model is not supported (the message says why).
    """

    def __init__(self, model: Any, max_positions: int) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(reason)
        cfg, base = model.config, model.model
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self.groups = self.heads // self.kv_heads
        self.scale = self.head_dim ** -0.5
        self.hidden = int(cfg.hidden_size)
        self.inter = int(cfg.intermediate_size)
        self.eps = float(getattr(base.layers[0].input_layernorm, "variance_epsilon",
                                 cfg.rms_norm_eps))
        pack = can_pack(self.dtype, str(self.device))
        self.packed = 0  # products run packed
        #: decode attention as batched products (see :data:`DENSE_MAX_COLUMNS_RATIO`)
        self.dense_decode = True

        def linear(weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
            if pack:
                self.packed += 1
                return PackedLinear.from_weight(weight.contiguous(), bias)
            return _Plain(weight.contiguous(), bias)

        self.layers: list[_Layer] = []
        with torch.no_grad():
            for layer in base.layers[: cfg.num_hidden_layers]:
                att, mlp = layer.self_attn, layer.mlp
                qkv = [_weight(m) for m in (att.q_proj, att.k_proj, att.v_proj)]
                gu = [_weight(m) for m in (mlp.gate_proj, mlp.up_proj)]
                ws, wg = [w for w, _ in qkv], [w for w, _ in gu]
                self.layers.append(_Layer(
                    ln1=layer.input_layernorm.weight.detach(),
                    qkv=linear(torch.cat(ws), _cat_bias([b for _, b in qkv], ws)),
                    o=linear(*_weight(att.o_proj)),
                    ln2=layer.post_attention_layernorm.weight.detach(),
                    gate_up=linear(torch.cat(wg), _cat_bias([b for _, b in gu], wg)),
                    down=linear(*_weight(mlp.down_proj))))
            self.embed = base.embed_tokens.weight.detach()
            self.norm = base.norm.weight.detach()
            self.head = linear(*_weight(model.lm_head))
            rot = base.rotary_emb
            inv_freq = rot.inv_freq.detach().to(device=self.device, dtype=torch.float32)
            scaling = float(getattr(rot, "attention_scaling", 1.0))
            # as the model computes them: float32 angles, cos/sin scaled, cast to the dtype
            pos = torch.arange(max_positions, device=self.device, dtype=torch.float32)
            freqs = pos[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            half = self.head_dim // 2
            sin = emb.sin() * scaling
            self.cos = (emb.cos() * scaling).to(self.dtype)
            # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2]
            self.sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1).to(self.dtype)

    def _dense_attention(self, queries: torch.Tensor, mask: torch.Tensor, cache: Any,
                         layer: int) -> torch.Tensor:
        """Decode attention as two batched products over the buffers' whole width
        (:meth:`SlotCache.full_rows`), softmax in float32 with the additive ``mask``
        (:meth:`SlotCache.decode_mask`); ``queries`` ``(rows, heads, 1, head_dim)``, already
        written keys and values. Returns ``(rows, 1, heads × head_dim)``."""
        rows, kv, g, d = queries.shape[0], self.kv_heads, self.groups, self.head_dim
        keys, values = cache.full_rows(layer)
        scores = torch.bmm(queries.reshape(rows * kv, g, d), keys.transpose(1, 2))
        probs = torch.softmax(torch.add(mask, scores.view(rows, kv, g, -1), alpha=self.scale),
                              dim=-1).to(values.dtype)
        att = torch.bmm(probs.view(rows * kv, g, -1), values)
        return att.view(rows, 1, kv * g * d)

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: Any) -> torch.Tensor:
        """Logits ``(rows, vocab)`` of the last position of each row.

        Args:
            input_ids: ``(rows, q)`` token ids.
            mask: ``(rows, 1, q, columns)`` boolean attention mask (True: attend), the
                cache window's (``SlotCache.mask``).
            positions: ``(rows, q)`` position ids (``SlotCache.positions``).
            cache: the ``SlotCache`` whose window (``set_window``) the call writes and
                attends over.
        """
        rows, q = input_ids.shape
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        x = F.embedding(input_ids, self.embed)
        cos = self.cos[positions].unsqueeze(2)  # (rows, q, 1, d)
        sin = self.sin[positions].unsqueeze(2)
        last = len(self.layers) - 1
        dense = None  # decode: the additive mask of the batched-product attention
        if q == 1 and self.dense_decode:
            window, columns = cache.decode_columns()
            if columns <= DENSE_MAX_COLUMNS_RATIO * window:
                dense = cache.decode_mask(torch.float32)
        for i, layer in enumerate(self.layers):
            y = F.rms_norm(x, (self.hidden,), layer.ln1, self.eps)
            qkv = layer.qkv(y).view(rows, q, h + 2 * kv, d)
            qk = qkv[:, :, : h + kv]
            qk = torch.addcmul(qk * cos, qk.roll(d // 2, dims=-1), sin)
            keys, values = cache.update(qk[:, :, h:].transpose(1, 2),
                                        qkv[:, :, h + kv:].transpose(1, 2), i)
            queries, m = qk[:, :, :h].transpose(1, 2), mask
            if i == last and q > 1:  # only the last position goes on
                queries, m, x, q = queries[:, :, -1:], mask[:, :, -1:], x[:, -1:], 1
            if dense is not None:
                att = self._dense_attention(queries, dense, cache, i)
            elif q == 1:
                # the decode query's heads of one group are that group's query rows
                att = F.scaled_dot_product_attention(
                    queries.reshape(rows, kv, self.groups, d), keys, values, attn_mask=m,
                    scale=self.scale)
            else:
                att = F.scaled_dot_product_attention(
                    queries, keys.repeat_interleave(self.groups, dim=1),
                    values.repeat_interleave(self.groups, dim=1), attn_mask=m,
                    scale=self.scale).transpose(1, 2)
            x = layer.o.add_forward(att.reshape(rows, q, h * d), x)
            y = F.rms_norm(x, (self.hidden,), layer.ln2, self.eps)
            gu = layer.gate_up(y)
            x = layer.down.add_forward(F.silu(gu[..., : self.inter]) * gu[..., self.inter:], x)
        x = F.rms_norm(x[:, -1], (self.hidden,), self.norm, self.eps)
        return self.head(x)


def build_fast_forward(model: Any, max_positions: int) -> LlamaForward | None:
    """A :class:`LlamaForward` of ``model``, or ``None`` (logged) when it is not
    supported: the engine then calls the transformers forward."""
    reason = unsupported_reason(model)
    if reason is not None:
        log.info("fast forward not used: %s; the transformers forward runs", reason)
        return None
    return LlamaForward(model, max_positions)
