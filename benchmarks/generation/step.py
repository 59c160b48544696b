"""One engine step, in-process: the transformers forward against the fast Llama forward.

Loads SmolLM2-135M (the shipped GGUF, converted once; ``--dtype``, default the engine's:
bfloat16 on a CPU with native bfloat16) and times, in one process, interleaved, the
forwards the engine can run over its right-aligned KV cache:

* ``transformers``: the transformers model in eager mode, its linear layers packed as
  the engine packs them (:func:`~neocloud.serving.textgen.linear.pack_linears`);
* ``fast``: :class:`~neocloud.serving.textgen.llama.LlamaForward` (fused products,
  native RMSNorm, rotary table, last-position LM head);
* ``compiled`` (with ``--compile``): the fast forward under ``torch.compile``
  (:mod:`neocloud.serving.textgen.compiled`), its compile time printed.

Cases: a decode step (one token per row) at ``--rows`` rows (default 1, 8, 32) over a
context of ``--context`` tokens per row, and a prefill of ``--prefill-rows`` prompts of
``--prefill-tokens`` tokens (8 × 100). Each case runs ``--steps`` steps per round, the
forwards taking turns, ``--repeats`` rounds; the figure is the median step time over all
rounds, per torch thread count of ``--threads``. Prints ``uptime`` before and after, a
table of milliseconds per step with each forward's ratio to ``transformers`` of the same
run, and one JSON line last.

    .venv/bin/python benchmarks/generation/step.py
    .venv/bin/python benchmarks/generation/step.py --threads 1 --repeats 3 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from neocloud.serving.textgen.kvcache import SlotCache  # noqa: E402
from neocloud.serving.textgen.linear import pack_linears  # noqa: E402
from neocloud.serving.textgen.llama import LlamaForward  # noqa: E402
from neocloud.serving.textgen.loading import load_causal_lm  # noqa: E402

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, SlotCache], torch.Tensor]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False
                              ).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def transformers_forward(model: Any) -> Forward:
    """The engine's call of the transformers model (as ``TextGenerator._forward``)."""

    def run(ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
            cache: SlotCache) -> torch.Tensor:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    return run


def new_cache(model: Any) -> SlotCache:
    cfg = model.config
    return SlotCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                     next(model.parameters()).dtype, "cpu")


def decode_steps(model: Any, fwd: Forward, rows: int, context: int, steps: int
                 ) -> list[float]:
    """Seconds of each of ``steps`` decode steps at ``rows`` rows, each row already
    holding ``context`` tokens (zeros: the time does not depend on the values)."""
    cache = new_cache(model)
    cache.reserve(rows, context, steps + 1)
    cache.add_rows([cache.t - context] * rows)
    ids = torch.ones((rows, 1), dtype=torch.long)
    times = []
    with torch.inference_mode():
        for _ in range(steps):
            cache.set_window(0, rows, cache.t)
            t0 = time.perf_counter()
            fwd(ids, cache.mask(1), cache.positions(1), cache)
            times.append(time.perf_counter() - t0)
            cache.t += 1
    return times


def prefill_steps(model: Any, fwd: Forward, rows: int, tokens: int, steps: int
                  ) -> list[float]:
    """Seconds of each of ``steps`` prefills of ``rows`` prompts of ``tokens`` tokens (the
    last one 10 % shorter, left-padded, as the engine lays out prompts of two lengths)."""
    times = []
    lengths = [tokens] * (rows - 1) + [max(1, tokens * 9 // 10)]
    with torch.inference_mode():
        for _ in range(steps):
            cache = new_cache(model)
            cache.reserve(rows, tokens, 1)
            cache.add_rows([cache.t - n for n in lengths])
            cache.set_window(0, rows, cache.t - tokens)
            ids = torch.ones((rows, tokens), dtype=torch.long)
            t0 = time.perf_counter()
            fwd(ids, cache.mask(tokens), cache.positions(tokens), cache)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                    help="model dtype (default: the engine's choice for this CPU)")
    ap.add_argument("--rows", default="1,8,32", help="decode batch sizes")
    ap.add_argument("--context", type=int, default=100, help="tokens per row before decoding")
    ap.add_argument("--prefill-rows", type=int, default=8)
    ap.add_argument("--prefill-tokens", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8, help="steps per case and round")
    ap.add_argument("--repeats", type=int, default=5, help="rounds")
    ap.add_argument("--threads", default="1,2", help="torch thread counts")
    ap.add_argument("--compile", action="store_true",
                    help="also time the fast forward under torch.compile")
    args = ap.parse_args()

    print(f"start: {uptime()}", flush=True)
    model, _tok, _dev = load_causal_lm(None, device="cpu", dtype=args.dtype)
    dtype = next(model.parameters()).dtype
    fast = LlamaForward(model, int(model.config.max_position_embeddings))
    pack_linears(model, "cpu")  # the engine packs the transformers model (bfloat16 CPU)
    forwards: dict[str, Forward] = {"transformers": transformers_forward(model), "fast": fast}
    compile_s: float | None = None
    if args.compile:
        from neocloud.serving.textgen.compiled import compile_forward

        t0 = time.perf_counter()
        forwards["compiled"] = compile_forward(fast, warm_rows=(1, 8, 32),
                                               warm_context=args.context)
        compile_s = time.perf_counter() - t0
        print(f"compile + warm-up: {compile_s:.1f} s ({uptime()})", flush=True)

    cases: list[tuple[str, Callable[[Forward], list[float]]]] = []
    for r in (int(x) for x in args.rows.split(",")):
        cases.append((f"decode rows={r}", lambda f, r=r: decode_steps(
            model, f, r, args.context, args.steps)))
    cases.append((f"prefill {args.prefill_rows}x{args.prefill_tokens}",
                  lambda f: prefill_steps(model, f, args.prefill_rows, args.prefill_tokens,
                                          max(2, args.steps // 4))))
    results: list[dict[str, Any]] = []
    for threads in (int(x) for x in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name, case in cases:
            for f in forwards.values():  # warm-up: first calls allocate
                case(f)
            times: dict[str, list[float]] = {k: [] for k in forwards}
            for _ in range(args.repeats):
                for k, f in forwards.items():
                    times[k].extend(case(f))
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            results.append({"case": name, "threads": threads, "ms": med})
            ratios = "  ".join(f"{k} {med['transformers'] / v:.2f}x" for k, v in med.items()
                               if k != "transformers")
            print(f"{name:<20} threads={threads}  " + "  ".join(
                f"{k} {v:8.2f} ms" for k, v in med.items()) + f"   speed-up: {ratios}",
                flush=True)
    end = uptime()
    print(f"end: {end}")
    print()
    head = "| case | threads | " + " | ".join(f"{k} (ms)" for k in forwards) + " | " + \
        " | ".join(f"{k} speed-up" for k in forwards if k != "transformers") + " |"
    print(head)
    print("|" + " --- |" * (2 + 2 * len(forwards) - 1))
    for r in results:
        med = r["ms"]
        print(f"| {r['case']} | {r['threads']} | " + " | ".join(
            f"{v:.2f}" for v in med.values()) + " | " + " | ".join(
            f"{med['transformers'] / v:.2f}x" for k, v in med.items() if k != "transformers")
            + " |")
    print(json.dumps({"dtype": str(dtype), "compile_s": compile_s, "results": results,
                      "end": end}))


if __name__ == "__main__":
    main()
