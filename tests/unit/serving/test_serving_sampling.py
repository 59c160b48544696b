"""Sampling of the text generator: greedy, nucleus, seeds, stops and lengths."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from neocloud.errors import InvalidRequest
from neocloud.serving.textgen.engine import SamplingParams, TextGenerator, run_to_end


class CharTokenizer:
    """Token i is chr(ord('a') + i); token 25 ('z') is EOS."""

    eos_token_id = 25
    chat_template = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + i) for i in ids if not (skip_special_tokens and i == 25))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) - 97 for c in text]


class FixedDist:
    """Next-token logits are always ``log(probs)``; the cache is the position."""

    def __init__(self, probs: list[float]) -> None:
        self.logits = torch.log(torch.tensor(probs))
        self.config = type("C", (), {"max_position_embeddings": 64})()

    def __call__(self, input_ids: Any, past_key_values: Any = None, use_cache: bool = True
                 ) -> Any:
        out = type("O", (), {})()
        out.logits = self.logits.expand(input_ids.shape[0], 1, -1).clone()
        out.past_key_values = 0
        return out


def gen(probs: list[float], params: SamplingParams) -> list[str]:
    g = TextGenerator(FixedDist(probs), CharTokenizer())
    texts, _, _ = asyncio.run(run_to_end(g, [0], params))
    return texts


P = [0.5, 0.3, 0.2] + [0.0] * 23  # only a, b, c are possible; never EOS


def test_greedy_and_top_p() -> None:
    assert gen(P, SamplingParams(max_tokens=5, temperature=0)) == ["aaaaa"]
    # top_p 0.5: the top token alone reaches the mass
    assert gen(P, SamplingParams(max_tokens=20, temperature=1.0, top_p=0.5, seed=3)) == ["a" * 20]
    mixed = gen(P, SamplingParams(max_tokens=200, temperature=1.0, top_p=1.0, seed=3))[0]
    assert set(mixed) == {"a", "b", "c"}


def test_seed_repeats_and_n_choices_differ() -> None:
    p = SamplingParams(max_tokens=30, temperature=1.0, n=3, seed=11)
    first, again = gen(P, p), gen(P, p)
    assert first == again and len(set(first)) > 1


def test_context_checks() -> None:
    g = TextGenerator(FixedDist(P), CharTokenizer())
    assert g.check([0] * 10, None, None) == 54
    assert g.check([0] * 10, None, 16) == 16
    with pytest.raises(InvalidRequest):
        g.check([0] * 10, 60, None)
    with pytest.raises(InvalidRequest):
        g.check([], 1, None)
    with pytest.raises(InvalidRequest):
        g.chat_prompt([{"role": "user", "content": "x"}])  # no chat template
