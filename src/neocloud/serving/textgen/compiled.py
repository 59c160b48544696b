"""The fast Llama forward under ``torch.compile`` (inductor), switched on by a setting.

:func:`compile_forward` wraps a :class:`~neocloud.serving.textgen.llama.LlamaForward` in a
module whose weights are parameters (plain layout), compiled with inductor's ``freezing``
(weights become constants: inductor prepacks the bfloat16 products for oneDNN itself and
fuses the elementwise operators between them: RMSNorm, rotary, SiLU-and-multiply,
residual sums) and ``dynamic=True`` (rows, columns and prompt lengths are symbolic, so a
step with other rows or a longer window reuses the compiled code). The KV cache write
and the attention over the window are one custom operator (``neocloud::kv_attend``,
eager inside), so the whole forward is one graph without breaks while the cache keeps
its Python bookkeeping.

Costs: compiling at start (a decode graph and a prefill graph) and the first calls of each
new specialisation (a new row count recompiled: sizes 1 are specialised, and guards on
sizes seen together). Measured on a 2-core CPU at a load average of 7-10 (SmolLM2-135M,
bfloat16): 793 s to compile the first two graphs, 263 s more at the first 32-row step,
then decode steps 0.89x (8 rows) and 0.94x (32 rows) the speed of the eager fast
forward. So it is off by default (``NEOCLOUD_COMPILE=1`` switches it on); see the
engine README.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F

from neocloud.serving.textgen.kvcache import SlotCache
from neocloud.serving.textgen.linear import PackedLinear
from neocloud.serving.textgen.llama import LlamaForward

log = logging.getLogger("neocloud.serving")

__all__ = ["compile_forward"]


@torch.library.custom_op("neocloud::kv_attend", mutates_args=("keys", "values"))
def kv_attend(queries: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor,
              keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, r0: int, c0: int,
              lo: int, scale: float) -> torch.Tensor:
    """Write ``new_keys``/``new_values`` ``(rows, kv_heads, q, d)`` at rows ``r0 ..`` and
    columns ``c0 .. c0 + q - 1`` of the layer buffers ``keys``/``values``, then attend
    ``queries`` ``(rows, heads, q, d)`` over columns ``lo .. c0 + q - 1`` with ``mask``;
    returns ``(rows, q, heads × d)``."""
    rows, heads, q, d = queries.shape
    kv = new_keys.shape[1]
    keys[r0:r0 + rows, :, c0:c0 + q] = new_keys
    values[r0:r0 + rows, :, c0:c0 + q] = new_values
    k = keys[r0:r0 + rows, :, lo:c0 + q]
    v = values[r0:r0 + rows, :, lo:c0 + q]
    groups = heads // kv
    if q == 1:
        att = F.scaled_dot_product_attention(queries.reshape(rows, kv, groups, d), k, v,
                                             attn_mask=mask, scale=scale)
        return att.reshape(rows, 1, heads * d)
    att = F.scaled_dot_product_attention(
        queries, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1),
        attn_mask=mask, scale=scale)
    return att.transpose(1, 2).reshape(rows, q, heads * d)


@kv_attend.register_fake
def _kv_attend_fake(queries: torch.Tensor, new_keys: torch.Tensor, new_values: torch.Tensor,
                    keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, r0: int,
                    c0: int, lo: int, scale: float) -> torch.Tensor:
    rows, heads, q, d = queries.shape
    return queries.new_empty((rows, q, heads * d))


def _plain(layer: Any) -> torch.nn.Parameter:
    w = layer.weight_matrix() if isinstance(layer, PackedLinear) else layer.weight
    return torch.nn.Parameter(w.detach().clone(), requires_grad=False)


class _Graph(torch.nn.Module):
    """The fast forward as one module (weights as parameters, for freezing)."""

    def __init__(self, fast: LlamaForward) -> None:
        super().__init__()
        self.f = fast
        self.qkv = torch.nn.ParameterList([_plain(x.qkv) for x in fast.layers])
        self.o = torch.nn.ParameterList([_plain(x.o) for x in fast.layers])
        self.gate_up = torch.nn.ParameterList([_plain(x.gate_up) for x in fast.layers])
        self.down = torch.nn.ParameterList([_plain(x.down) for x in fast.layers])
        self.head = _plain(fast.head)
        self.ln1 = torch.nn.ParameterList([torch.nn.Parameter(x.ln1, requires_grad=False)
                                           for x in fast.layers])
        self.ln2 = torch.nn.ParameterList([torch.nn.Parameter(x.ln2, requires_grad=False)
                                           for x in fast.layers])
        self.embed = torch.nn.Parameter(fast.embed, requires_grad=False)
        self.norm = torch.nn.Parameter(fast.norm, requires_grad=False)
        self.cos = torch.nn.Parameter(fast.cos, requires_grad=False)
        self.sin = torch.nn.Parameter(fast.sin, requires_grad=False)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                keys: list[torch.Tensor], values: list[torch.Tensor], r0: int, c0: int,
                lo: int) -> torch.Tensor:
        f = self.f
        rows, q = input_ids.shape
        h, kv, d, hid, inter = f.heads, f.kv_heads, f.head_dim, f.hidden, f.inter
        x = F.embedding(input_ids, self.embed)
        cos = self.cos[positions].unsqueeze(2)
        sin = self.sin[positions].unsqueeze(2)
        last = len(self.qkv) - 1
        for i in range(len(self.qkv)):
            y = F.rms_norm(x, (hid,), self.ln1[i], f.eps)
            qkv = F.linear(y, self.qkv[i]).view(rows, q, h + 2 * kv, d)
            qk = qkv[:, :, : h + kv]
            qk = qk * cos + qk.roll(d // 2, dims=-1) * sin
            queries, m = qk[:, :, :h].transpose(1, 2), mask
            att = torch.ops.neocloud.kv_attend(
                queries, qk[:, :, h:].transpose(1, 2), qkv[:, :, h + kv:].transpose(1, 2),
                keys[i], values[i], m, r0, c0, lo, f.scale)
            if i == last:
                x, att = x[:, -1:], att[:, -1:]
            x = F.linear(att, self.o[i]) + x
            y = F.rms_norm(x, (hid,), self.ln2[i], f.eps)
            gu = F.linear(y, self.gate_up[i])
            x = F.linear(F.silu(gu[..., :inter]) * gu[..., inter:], self.down[i]) + x
        x = F.rms_norm(x[:, -1], (hid,), self.norm, f.eps)
        return F.linear(x, self.head)


class CompiledForward:
    """Calls the compiled graph with the cache's window (same signature as
    :class:`LlamaForward`)."""

    def __init__(self, graph: _Graph) -> None:
        import warnings

        with warnings.catch_warnings():  # imported by freezing; it warns of torch.jit
            warnings.simplefilter("ignore", DeprecationWarning)
            import torch.utils.mkldnn  # noqa: F401
        self.graph = graph
        self.run = torch.compile(graph, dynamic=True, options={"freezing": True})
        self.packed = graph.f.packed
        self.dtype = graph.f.dtype

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: SlotCache) -> torch.Tensor:
        r0, c0, lo = cache._r0, cache._c0, cache._lo
        return self.run(input_ids, mask, positions, cache.keys, cache.values, r0, c0, lo)


def compile_forward(fast: LlamaForward, warm_rows: tuple[int, ...] = (1, 8),
                    warm_context: int = 100) -> CompiledForward:
    """The compiled forward of ``fast``, compiled now: decode steps at ``warm_rows`` rows
    and one prefill run once on a scratch cache of ``warm_context`` tokens (logged with
    the seconds taken)."""
    t0 = time.perf_counter()
    out = CompiledForward(_Graph(fast))
    layers = len(fast.layers)
    warm_context = max(1, min(warm_context, fast.cos.shape[0] - 2))
    with torch.inference_mode():
        for rows in warm_rows:
            for q in (warm_context, 1, 1):
                cache = SlotCache(layers, fast.kv_heads, fast.head_dim, fast.dtype,
                                  str(fast.device))
                cache.reserve(rows, warm_context + 2, 2)
                cache.add_rows([cache.t - warm_context - 2 + r % 2 for r in range(rows)])
                c0 = cache.t - warm_context - 2 if q > 1 else cache.t
                cache.set_window(0, rows, c0)
                ids = torch.ones((rows, q), dtype=torch.long, device=fast.device)
                out(ids, cache.mask(q), cache.positions(q), cache)
    log.info("fast forward compiled in %.1f s", time.perf_counter() - t0)
    return out
