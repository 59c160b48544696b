"""One set of engine metrics on every replica's ``/metrics``, whatever the engine.

Series (no labels; the replica is the unit):

========================================================  =========  ===========================
name                                                      type       meaning
========================================================  =========  ===========================
``neocloud_engine_requests_running``                      gauge      requests in the batch
``neocloud_engine_requests_waiting``                      gauge      requests queued (new or
                                                                     preempted)
``neocloud_engine_kv_cache_usage_ratio``                  gauge      KV cache in use, 0..1
``neocloud_engine_tokens_in_flight``                      gauge      prompt + generated tokens
                                                                     of the running requests
                                                                     (built-in engine only)
``neocloud_engine_prompt_tokens_total``                   counter    prompt tokens admitted
``neocloud_engine_generation_tokens_total``               counter    tokens generated
``neocloud_engine_preemptions_total``                     counter    sequences preempted
``neocloud_engine_prefix_cache_queries_total``            counter    prompt tokens looked up
                                                                     in the prefix cache
``neocloud_engine_prefix_cache_hits_total``               counter    of those, tokens found
                                                                     (not computed again)
``neocloud_engine_time_to_first_token_seconds``           histogram  request start to its
                                                                     first token
``neocloud_engine_time_per_output_token_seconds``         histogram  mean gap between the
                                                                     tokens of one request
========================================================  =========  ===========================

The built-in engine records them itself (:class:`EngineMetrics`). A vLLM replica's own
series are renamed onto these by :func:`translate_vllm` (:data:`VLLM_NAMES` is the
mapping; vLLM's labels other than ``le`` are dropped, its bucket bounds kept).
"""

from __future__ import annotations

import re

from neocloud.serving.metrics import Histogram

#: Bounds of the time-to-first-token histogram (seconds).
TTFT_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                                   7.5, 10.0, 20.0, 40.0, 80.0)
#: Bounds of the time-per-output-token histogram (seconds).
TPOT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                                   0.5, 0.75, 1.0, 2.5)

PREFIX = "neocloud_engine_"
RUNNING = PREFIX + "requests_running"
WAITING = PREFIX + "requests_waiting"
KV_USAGE = PREFIX + "kv_cache_usage_ratio"
TOKENS_IN_FLIGHT = PREFIX + "tokens_in_flight"
PROMPT_TOKENS = PREFIX + "prompt_tokens_total"
GENERATION_TOKENS = PREFIX + "generation_tokens_total"
PREEMPTIONS = PREFIX + "preemptions_total"
PREFIX_QUERIES = PREFIX + "prefix_cache_queries_total"
PREFIX_HITS = PREFIX + "prefix_cache_hits_total"
TTFT = PREFIX + "time_to_first_token_seconds"
TPOT = PREFIX + "time_per_output_token_seconds"

#: vLLM's metric names (0.8 and later) -> ours. ``vllm:kv_cache_usage_perc`` is a fraction
#: (0..1) despite its name; older releases call it ``vllm:gpu_cache_usage_perc`` and the
#: token gap ``vllm:time_per_output_token_seconds`` (newer: ``inter_token_latency``).
VLLM_NAMES: dict[str, str] = {
    "vllm:num_requests_running": RUNNING,
    "vllm:num_requests_waiting": WAITING,
    "vllm:kv_cache_usage_perc": KV_USAGE,
    "vllm:gpu_cache_usage_perc": KV_USAGE,
    "vllm:prompt_tokens_total": PROMPT_TOKENS,
    "vllm:generation_tokens_total": GENERATION_TOKENS,
    "vllm:num_preemptions_total": PREEMPTIONS,
    "vllm:prefix_cache_queries_total": PREFIX_QUERIES,
    "vllm:prefix_cache_hits_total": PREFIX_HITS,
    "vllm:time_to_first_token_seconds": TTFT,
    "vllm:inter_token_latency_seconds": TPOT,
    "vllm:time_per_output_token_seconds": TPOT,
}

_TYPES = {RUNNING: "gauge", WAITING: "gauge", KV_USAGE: "gauge", TOKENS_IN_FLIGHT: "gauge",
          PROMPT_TOKENS: "counter",
          GENERATION_TOKENS: "counter", PREEMPTIONS: "counter", PREFIX_QUERIES: "counter",
          PREFIX_HITS: "counter", TTFT: "histogram",
          TPOT: "histogram"}


class EngineMetrics:
    """The two histograms of one engine (observed on the event loop); gauges and counters
    are the engine's own numbers, passed in at render time."""

    def __init__(self) -> None:
        self.ttft = Histogram(TTFT, "Time from a request's start to its first token, seconds.",
                              (), TTFT_BUCKETS)
        self.tpot = Histogram(TPOT, "Mean time between the output tokens of a request, "
                              "seconds.", (), TPOT_BUCKETS)

    def render(self, *, running: int, waiting: int, kv_usage: float, prompt_tokens: int,
               generation_tokens: int, preemptions: int,
               tokens_in_flight: int | None = None, prefix_cache_queries: int = 0,
               prefix_cache_hits: int = 0) -> bytes:
        """Exposition text of every series (``tokens_in_flight`` only when given)."""
        lines: list[str] = []
        for name, kind, doc, value in (
            (RUNNING, "gauge", "Requests in the running batch.", str(running)),
            (WAITING, "gauge", "Requests waiting for admission.", str(waiting)),
            (KV_USAGE, "gauge", "KV cache in use (fraction of the budget).", f"{kv_usage:.6f}"),
            *(((TOKENS_IN_FLIGHT, "gauge", "Prompt and generated tokens of the running "
                "requests.", str(tokens_in_flight)),) if tokens_in_flight is not None else ()),
            (PROMPT_TOKENS, "counter", "Prompt tokens of admitted requests.", str(prompt_tokens)),
            (GENERATION_TOKENS, "counter", "Tokens generated.", str(generation_tokens)),
            (PREEMPTIONS, "counter", "Sequences preempted (recomputed later).",
             str(preemptions)),
            (PREFIX_QUERIES, "counter", "Prompt tokens looked up in the prefix cache.",
             str(prefix_cache_queries)),
            (PREFIX_HITS, "counter", "Prompt tokens found in the prefix cache.",
             str(prefix_cache_hits)),
        ):
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines.extend(self.ttft.render())
        lines.extend(self.tpot.render())
        return ("\n".join(lines) + "\n").encode()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*?)(_bucket|_sum|_count)?(\{[^}]*\})?\s+(\S+)")
_LE = re.compile(r'le="([^"]*)"')


def translate_vllm(text: str) -> str:
    """vLLM's ``/metrics`` text with the series of :data:`VLLM_NAMES` renamed onto ours
    (values of one name summed over vLLM's label sets; other series dropped)."""
    values: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, suffix, labels, value = m.group(1), m.group(2) or "", m.group(3) or "", m.group(4)
        ours = VLLM_NAMES.get(name)
        if ours is None and suffix:
            continue
        if ours is None:
            continue
        if _TYPES[ours] != "histogram" and suffix:
            continue  # e.g. a _count of a counter family: not ours
        le = _LE.search(labels) if suffix == "_bucket" else None
        key = suffix + (f'{{le="{le.group(1)}"}}' if le else "")
        try:
            v = float(value)
        except ValueError:
            continue
        series = values.setdefault(ours, {})
        series[key] = series.get(key, 0.0) + v
    out: list[str] = []
    for ours, series in values.items():
        out.append(f"# TYPE {ours} {_TYPES[ours]}")
        for key, v in series.items():
            num = str(int(v)) if v.is_integer() else repr(v)
            if key.startswith("_bucket"):
                out.append(f"{ours}_bucket{key[len('_bucket'):]} {num}")
            else:
                out.append(f"{ours}{key} {num}")
    return "\n".join(out) + ("\n" if out else "")
