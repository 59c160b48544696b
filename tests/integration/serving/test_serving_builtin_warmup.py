"""The built-in services declare a warm-up call: a replica of ``embeddings`` or ``chat`` is
ready only after one real call went through its model (real all-MiniLM-L6-v2; a tiny
random-weight Llama and a scripted model with SmolLM2's tokenizer)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from neocloud.serving.builtin.chat import ChatService
from neocloud.serving.builtin.common import WARMUP_MODEL
from neocloud.serving.builtin.embeddings import EmbeddingsService
from neocloud.serving.textgen.engine import TextGenerator


def _wait(cond, timeout_s: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(cond())


class GatedEmbeddings(EmbeddingsService):
    """The real service; each forward pass waits for ``release`` and is recorded."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.batches: list[list[str]] = []
        self.release = threading.Event()

    def _encode_batch(self, texts: list[str]) -> list[tuple[Any, int]]:
        self.batches.append(list(texts))
        assert self.release.wait(60)
        return super()._encode_batch(texts)


def _requests_counted(url: str) -> list[str]:
    return [line for line in httpx.get(url + "/metrics").text.splitlines()
            if line.startswith("neocloud_requests_total{")]


def test_embeddings_replica_is_ready_only_after_a_forward_pass(serve) -> None:
    svc = GatedEmbeddings()
    run = serve(svc, name="minilm", wait_ready=False)
    # After setup() the runtime's warm-up call reaches the model, before any client...
    assert _wait(lambda: svc.batches == [["warm-up"]])
    r = httpx.get(run.url + "/ready")
    assert r.status_code == 503 and r.json()["status"] == "loading"
    # ...and the replica turns ready once that forward pass returned.
    svc.release.set()
    assert _wait(lambda: httpx.get(run.url + "/ready").status_code == 200)
    assert run.app.setup_error is None
    assert _requests_counted(run.url) == []  # a warm-up call is not a client request
    out = httpx.post(run.url + "/v1/embeddings", json={"model": "minilm", "input": "a cat"})
    assert out.status_code == 200 and out.json()["model"] == "minilm"
    assert len(out.json()["data"][0]["embedding"]) == 384
    assert svc.batches == [["warm-up"], ["a cat"]]
    # The warm-up's placeholder model is no model for a client.
    r = httpx.post(run.url + "/v1/embeddings", json={"model": WARMUP_MODEL, "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_chat_replica_generated_before_ready(serve, tiny_lm_dir) -> None:
    run = serve("chat", model=str(tiny_lm_dir), name="tiny")
    svc = run.app.service
    # The warm-up call (request id "warmup") generated its two tokens before /ready.
    usage = svc.usage("warmup")
    assert usage is not None and usage["finished"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 2
    assert _requests_counted(run.url) == []
    r = httpx.post(run.url + "/v1/chat/completions", json={
        "model": WARMUP_MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 404
    r = httpx.post(run.url + "/v1/completions", json={"model": WARMUP_MODEL, "prompt": "Hi"},
                   headers={"X-Neocloud-Warmup": "1"})
    assert r.status_code == 404  # completions declare no warm-up: never the placeholder


class _Scripted(ChatService):
    lm: Any = None
    tokenizer: Any = None

    def setup(self) -> None:
        self.generator = TextGenerator(self.lm, self.tokenizer)


def test_chat_warmup_is_two_model_steps_and_leaves_outputs_alone(serve, scripted_lm,
                                                                real_tokenizer) -> None:
    text = "alpha beta gamma"
    lm = scripted_lm([real_tokenizer.encode(text, add_special_tokens=False)],
                     vocab=len(real_tokenizer), eos=real_tokenizer.eos_token_id)
    cls = type("S", (_Scripted,), {"lm": lm, "tokenizer": real_tokenizer, "name": "s"})
    run = serve(cls)
    # A prefill and one decode step: the warm-up's two tokens, then it stops.
    assert lm.steps == 2
    r = httpx.post(run.url + "/v1/chat/completions", json={
        "model": "s", "messages": [{"role": "user", "content": "x"}], "max_tokens": 50})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == text
    assert r.json()["model"] == "s"
