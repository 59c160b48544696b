"""Finding token counts in passing response bytes."""

from __future__ import annotations

import json

from neocloud.gateway.usage import UsageScanner, find_usage


def _sse(*events: object) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + (
        b"data: [DONE]\n\n"
    )


def test_json_body() -> None:
    body = json.dumps({"data": [], "usage": {"prompt_tokens": 7, "total_tokens": 7}}).encode()
    assert find_usage(body) == (7, 0)


def test_stream_takes_the_last_usage_and_skips_nulls() -> None:
    stream = _sse(
        {"choices": [{"delta": {"content": "hi"}}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9,
                                  "completion_tokens_details": {"reasoning_tokens": 0}}},
    )
    assert find_usage(stream) == (5, 9)


def test_text_that_mentions_usage_is_not_read_as_usage() -> None:
    text = 'the "usage": {"prompt_tokens": 999} of words'
    stream = _sse({"choices": [{"delta": {"content": text}}]})
    assert find_usage(stream) is None


def test_bad_counts_read_as_zero_and_missing_usage_is_none() -> None:
    assert find_usage(b'{"usage": {"prompt_tokens": "3", "completion_tokens": true}}') == (0, 0)
    assert find_usage(b'{"usage": null}') is None
    assert find_usage(b'{"usage": {"prompt_tokens": 1') is None  # cut off
    assert find_usage(b"") is None


def test_scanner_keeps_head_and_bounded_tail() -> None:
    head_first = json.dumps({"usage": {"prompt_tokens": 2, "completion_tokens": 3},
                             "data": ["x" * 100] * 100}).encode()
    scanner = UsageScanner(limit=256, keep_head=True)
    for i in range(0, len(head_first), 64):
        scanner.feed(head_first[i : i + 64])
    assert scanner.tokens() == (2, 3)
    assert scanner._tail_len < 256 + 64

    stream = _sse(*([{"choices": [{"delta": {"content": "y" * 50}}]}] * 200),
                  {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 200}})
    tail_only = UsageScanner(limit=512, keep_head=False)
    for i in range(0, len(stream), 100):
        tail_only.feed(stream[i : i + 100])
    assert tail_only.tokens() == (4, 200)
    assert UsageScanner(limit=64, keep_head=False).tokens() == (0, 0)
