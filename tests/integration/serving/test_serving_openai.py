"""The OpenAI surface of the built-in services through the official ``openai`` client:
embeddings (real all-MiniLM-L6-v2), chat and completions (tiny random-weight Llama with
SmolLM2's tokenizer, and a scripted model for exact outputs)."""

from __future__ import annotations

import base64
import math
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from neocloud.serving.builtin.chat import ChatService
from neocloud.serving.builtin.embeddings import EmbeddingsService
from neocloud.serving.textgen.engine import TextGenerator


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_embeddings_float_base64_single_and_list(serve) -> None:
    run = serve(EmbeddingsService, name="minilm")
    client = _client(run.url)
    assert [m.id for m in client.models.list()] == ["minilm"]
    # the official client asks for base64 by default and decodes it itself
    many = client.embeddings.create(model="minilm", input=["a cat sat", "stocks fell today"])
    assert [d.index for d in many.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in many.data)
    assert math.isclose(sum(x * x for x in many.data[0].embedding), 1.0, rel_tol=1e-4)
    assert many.usage.prompt_tokens == many.usage.total_tokens > 4
    single = client.embeddings.create(model="minilm", input="a cat sat", encoding_format="float")
    assert np.allclose(single.data[0].embedding, many.data[0].embedding, atol=1e-5)
    raw = httpx.post(run.url + "/v1/embeddings", json={
        "model": "minilm", "input": "a cat sat", "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vec, single.data[0].embedding, atol=1e-6)
    short = client.embeddings.create(model="minilm", input="a cat sat", dimensions=64,
                                     encoding_format="float")
    assert len(short.data[0].embedding) == 64
    assert math.isclose(sum(x * x for x in short.data[0].embedding), 1.0, rel_tol=1e-4)


def test_embeddings_errors(serve) -> None:
    run = serve(EmbeddingsService)
    client = _client(run.url)
    with pytest.raises(openai.NotFoundError) as nf:
        client.embeddings.create(model="other", input="x")
    assert nf.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="embeddings", input=[[1, 2, 3]])
    assert bad.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="embeddings", input=[])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="embeddings", input="x", dimensions=1000)


def test_chat_with_tiny_model(serve, tiny_lm_dir) -> None:
    run = serve("chat", model=str(tiny_lm_dir), name="tiny")
    client = _client(run.url)
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hello"}],
        max_tokens=8, temperature=0.7, top_p=0.9, seed=7)
    assert r.object == "chat.completion" and len(r.choices) == 1
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hello"}],
        max_tokens=8, temperature=0.7, top_p=0.9, seed=7)
    assert again.choices[0].message.content == r.choices[0].message.content
    c = client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0)
    assert c.object == "text_completion" and c.usage.completion_tokens <= 5


def test_chat_stream_n3_with_usage(serve, tiny_lm_dir) -> None:
    run = serve("chat", model=str(tiny_lm_dir), name="tiny")
    client = _client(run.url)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, n=3,
        stream=True, stream_options={"include_usage": True}, seed=1)
    texts = {0: "", 1: "", 2: ""}
    finished: dict[int, str] = {}
    chunks = list(stream)
    for ch in chunks[:-1]:
        assert ch.usage is None
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert set(finished) == {0, 1, 2}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert 3 <= last.usage.completion_tokens <= 18
    assert last.usage.prompt_tokens > 0


def test_errors_come_before_the_stream(serve, tiny_lm_dir) -> None:
    run = serve("chat", model=str(tiny_lm_dir), name="tiny")
    client = _client(run.url)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=10_000, stream=True)
    assert exc.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], stream=True,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert exc.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}],
                                       stream=True)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny", messages=[], stream=True)
    assert exc.value.body["param"] == "messages"  # type: ignore[index]
    r = httpx.post(run.url + "/v1/chat/completions",
                   json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                         "temperature": 5, "stream": True})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"


class ScriptedChat(ChatService):
    """ChatService over a scripted model (exact outputs) with the real tokenizer."""

    lm: Any = None
    tokenizer: Any = None

    def setup(self) -> None:
        self.generator = TextGenerator(self.lm, self.tokenizer)


def _scripted(scripted_lm, tokenizer, texts: list[str]) -> tuple[type[ScriptedChat], Any]:
    scripts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    lm = scripted_lm(scripts, vocab=len(tokenizer), eos=tokenizer.eos_token_id)
    cls = type("Scripted", (ScriptedChat,), {"lm": lm, "tokenizer": tokenizer, "name": "s"})
    return cls, lm


def test_utf8_split_across_tokens_never_breaks_a_character(serve, scripted_lm,
                                                           real_tokenizer) -> None:
    text = "Ciao 🙂 — 日本語 ok"
    ids = real_tokenizer.encode(text, add_special_tokens=False)
    # the test is meaningful only if some character really spans several tokens
    assert any("\ufffd" in real_tokenizer.decode([i]) for i in ids)
    cls, _ = _scripted(scripted_lm, real_tokenizer, [text])
    run = serve(cls)
    client = _client(run.url)
    pieces = []
    for ch in client.chat.completions.create(
            model="s", messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=64):
        for c in ch.choices:
            if c.delta.content:
                assert "\ufffd" not in c.delta.content
                pieces.append(c.delta.content)
    assert "".join(pieces) == text
    assert len(pieces) > 3  # streamed in several events


def test_max_tokens_inside_a_character_ends_with_whole_characters(serve, scripted_lm,
                                                                  real_tokenizer) -> None:
    text = "a🙂日b"
    ids = real_tokenizer.encode(text, add_special_tokens=False)
    assert any("\ufffd" in real_tokenizer.decode(ids[:k]) for k in range(1, len(ids)))
    cls, _ = _scripted(scripted_lm, real_tokenizer, [text])
    run = serve(cls)
    client = _client(run.url)
    for k in range(1, len(ids) + 1):
        whole = real_tokenizer.decode(ids[:k]).rstrip("\ufffd")
        r = client.completions.create(model="s", prompt="x", max_tokens=k)
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="s", prompt="x", max_tokens=k, stream=True) if c.choices)
        assert r.choices[0].text == streamed == whole, k
        assert r.usage.completion_tokens == k


def test_stop_strings_and_finish_reasons(serve, scripted_lm, real_tokenizer) -> None:
    cls, _ = _scripted(scripted_lm, real_tokenizer, ["alpha beta END gamma"])
    run = serve(cls)
    client = _client(run.url)
    r = client.completions.create(model="s", prompt="x", max_tokens=50, stop=["END"])
    assert r.choices[0].text == "alpha beta " and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="s", prompt="x", max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    r = client.completions.create(model="s", prompt="x", max_tokens=50)
    assert r.choices[0].text == "alpha beta END gamma" and r.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(
            model="s", prompt="x", max_tokens=50, stop=["ta E"], stream=True) if c.choices)
    assert streamed == "alpha be"


def test_stream_n3_distinct_scripts(serve, scripted_lm, real_tokenizer) -> None:
    cls, _ = _scripted(scripted_lm, real_tokenizer, ["one", "two two", "three three three"])
    run = serve(cls)
    client = _client(run.url)
    texts = ["", "", ""]
    for ch in client.chat.completions.create(
            model="s", messages=[{"role": "user", "content": "x"}], n=3, stream=True):
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == ["one", "two two", "three three three"]


def test_stream_disconnect_stops_generation(serve, scripted_lm, real_tokenizer) -> None:
    cls, lm = _scripted(scripted_lm, real_tokenizer, ["word " * 500])
    lm.delay_s = 0.01
    run = serve(cls)
    with httpx.stream("POST", run.url + "/v1/chat/completions", json={
            "model": "s", "messages": [{"role": "user", "content": "x"}], "stream": True,
            "max_tokens": 400}) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == 5:
                    break
    import time

    time.sleep(0.3)
    steps = lm.steps
    time.sleep(0.3)
    assert lm.steps == steps < 100, "generation kept running after the client left"
