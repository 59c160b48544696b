"""The official OpenAI client through the gateway."""

from __future__ import annotations

from typing import Any

import openai
import pytest


@pytest.fixture()
def client(cloud: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cloud.url}/v1", api_key=cloud.token_a, max_retries=0)


def test_embeddings(client: openai.OpenAI) -> None:
    out = client.embeddings.create(model="emb", input=["hello there", "x"])
    assert [d.embedding for d in out.data] == [[11.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    assert out.usage.prompt_tokens == 3


def test_chat_streaming_with_usage(client: openai.OpenAI, cloud: Any) -> None:
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "say hello to the world"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = []
    usage = None
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text) == "Hello, world!"
    assert usage is not None and usage.completion_tokens == 4
    rec = cloud.sink.wait_for(
        lambda r: r.deployment_id == "d-chat" and r.prompt_tokens == 5 and r.status == 200
    )
    assert rec.completion_tokens == 4 and rec.path == "/v1/chat/completions"


def test_chat_non_streaming_usage_is_recorded(client: openai.OpenAI, cloud: Any) -> None:
    out = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "one two three four five six"}]
    )
    assert out.choices[0].message.content == "Hello, world!"
    rec = cloud.sink.wait_for(lambda r: r.deployment_id == "d-chat" and r.prompt_tokens == 6)
    assert rec.completion_tokens == 4


def test_errors_map_to_openai_exceptions(client: openai.OpenAI, cloud: Any) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.embeddings.create(model="missing", input="x")
    assert nf.value.code == "model_not_found"
    bad = openai.OpenAI(base_url=f"{cloud.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="emb", input="x")
    assert [m.id for m in client.models.list()] == ["chat", "cold", "dead", "echo", "emb",
                                                     "mixed"]
