"""In-process embedding limit (no HTTP): all-MiniLM-L6-v2 called directly on batches of
1, 32 and 64 copies of the benchmark sentence; the best of two passes per batch size, in
sentences/s. Prints one line ``INPROC_RESULT {...}``."""

from __future__ import annotations

import argparse
import json
import os
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentence", required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    out = embed(a.sentence, a.seconds)
    print("INPROC_RESULT " + json.dumps(out), flush=True)
