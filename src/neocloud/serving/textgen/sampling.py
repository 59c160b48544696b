"""Sampling parameters and the batched sampler of the generation engine.

``temperature == 0`` is greedy (argmax). Otherwise logits are divided by the temperature,
nucleus filtering keeps the smallest set of tokens whose probability mass reaches
``top_p`` (Holtzman et al., 2019, "The Curious Case of Neural Text Degeneration"), and a
token is drawn by inverse transform sampling: one uniform number from the sequence's own
``torch.Generator`` (seeded by ``seed``, random when absent), looked up in the cumulative
distribution. Every row of a batch has its own parameters and generator, so a sequence
draws the same tokens whatever else runs beside it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    """Options of one generation; ``max_tokens`` per choice, ``n`` choices, at most 4
    ``stop`` strings (checked by the service)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None


def make_generator(seed: int | None, choice: int, device: str) -> Any:
    """The generator of choice ``choice`` (``seed + choice``; random without a seed)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed((seed + choice) if seed is not None else secrets.randbits(63))
    return gen


def sample(logits: Any, params: list[SamplingParams], generators: list[Any]) -> list[int]:
    """One token per row of ``logits`` (``(rows, vocab)``), row ``i`` drawn with
    ``params[i]`` and ``generators[i]``."""
    import torch

    with torch.inference_mode():
        rows = [i for i, p in enumerate(params) if p.temperature > 0.0]
        if len(rows) < len(params):
            # greedy rows: argmax in float32, which holds every bfloat16/float16 value
            # exactly (the same token, first of equal maxima), and runs about twice as
            # fast on CPU as the bfloat16 argmax
            out: list[int] = logits.float().argmax(dim=-1).tolist()
        else:
            out = [0] * len(params)
        if not rows:
            return out
        idx = torch.tensor(rows, device=logits.device)
        temps = torch.tensor([params[i].temperature for i in rows], device=logits.device)
        picked_logits = logits.index_select(0, idx).float()
        probs = torch.softmax(picked_logits / temps[:, None], dim=-1)
        top_p = [params[i].top_p for i in rows]
        order = None
        if any(p < 1.0 for p in top_p):
            probs, order = torch.sort(probs, dim=-1, descending=True)
            cum = torch.cumsum(probs, dim=-1)
            keep_mass = torch.tensor(top_p, device=logits.device)[:, None]
            probs = probs.masked_fill(cum - probs >= keep_mass, 0.0)
        cum = torch.cumsum(probs, dim=-1)
        u = torch.cat([torch.rand(1, generator=generators[i], device=logits.device)
                       for i in rows]) * cum[:, -1]
        picked = torch.searchsorted(cum, u[:, None]).clamp_(max=cum.shape[-1] - 1)
        if order is not None:
            picked = order.gather(-1, picked)
        for row, tok in zip(rows, picked.squeeze(-1).tolist(), strict=True):
            out[row] = tok
        return out
