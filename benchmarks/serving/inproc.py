"""In-process limits (no HTTP): prints one line ``INPROC_RESULT {...}``.

embed: all-MiniLM-L6-v2 called directly on batches of 1, 32 and 64 copies of the benchmark
sentence; the best of two passes per batch size, in sentences/s.
generate: neocloud's text generator (the same engine the chat replica runs) on the
benchmark prompt, greedy; median tokens/s and time to the first token over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))


def embed(sentence: str, seconds: float) -> dict[str, float]:
    import common

    model = common.load()
    best: dict[str, float] = {}
    for _ in range(2):
        for bs in (1, 32, 64):
            batch = [sentence] * bs
            common.encode(model, batch)  # warm-up
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                common.encode(model, batch)
                n += 1
            rate = n * bs / (time.perf_counter() - t0)
            best[str(bs)] = max(best.get(str(bs), 0.0), rate)
    return best


def generate(prompt: str, max_tokens: int, runs: int) -> dict[str, float]:
    from neocloud.serving.textgen.engine import SamplingParams, TextGenerator
    from neocloud.serving.textgen.loading import load_causal_lm

    model, tokenizer, device = load_causal_lm(None)
    gen = TextGenerator(model, tokenizer, device)
    ids = gen.chat_prompt([{"role": "user", "content": prompt}])
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)

    async def once() -> tuple[float, float, int]:
        t0 = time.perf_counter()
        first = None
        tokens = 0
        async for deltas in gen.generate(ids, params):
            if first is None and any(d.text for d in deltas):
                first = time.perf_counter() - t0
            tokens += sum(d.tokens for d in deltas)
        return tokens / (time.perf_counter() - t0), first or 0.0, tokens

    async def main() -> list[tuple[float, float, int]]:
        await once()  # warm-up
        return [await once() for _ in range(runs)]

    res = asyncio.run(main())
    return {"tokens_per_s": statistics.median(r[0] for r in res),
            "ttft_ms": 1000 * statistics.median(r[1] for r in res),
            "tokens": statistics.median(r[2] for r in res)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["embed", "generate"])
    ap.add_argument("--sentence", default="")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--prompt", default="")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    out = (embed(a.sentence, a.seconds) if a.what == "embed"
           else generate(a.prompt, a.max_tokens, a.runs))
    print("INPROC_RESULT " + json.dumps(out), flush=True)
