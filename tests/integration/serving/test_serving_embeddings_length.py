"""Inputs longer than the embeddings model's maximum sequence length.

Found: a 2000-word input came back embedded with ``prompt_tokens=256`` and no error (the
tokenizer cut it to all-MiniLM-L6-v2's 256 tokens). OpenAI answers 400 for an input longer
than the model's context; so does the built-in service now, naming the input.
"""

from __future__ import annotations

import asyncio

import httpx

from neocloud.serving.builtin.embeddings import EmbeddingsService, max_input_tokens

LIMIT = 256  # all-MiniLM-L6-v2's max_seq_length
LONG = " ".join(["word"] * 2000)


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", json={"model": "embeddings", **body},
                      timeout=60)


def test_an_input_over_the_limit_is_a_400_naming_it(serve) -> None:
    run = serve(EmbeddingsService)
    r = _post(run.url, {"input": LONG})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input" and err["type"] == "invalid_request_error"
    assert "2002 tokens" in err["message"] and f"at most {LIMIT}" in err["message"]
    r = _post(run.url, {"input": ["a cat sat", LONG, "also too long " * 200]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "input.1"


def test_the_limit_itself_fits_and_one_more_token_does_not(serve) -> None:
    run = serve(EmbeddingsService)
    at_limit = " ".join(["a"] * (LIMIT - 2))  # + [CLS] and [SEP]
    ok = _post(run.url, {"input": at_limit})
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["prompt_tokens"] == LIMIT
    over = _post(run.url, {"input": ["x", at_limit + " a"]})
    assert over.status_code == 400
    assert over.json()["error"]["param"] == "input.1"
    assert f"{LIMIT + 1} tokens" in over.json()["error"]["message"]


def test_a_long_input_fails_only_its_own_request_in_a_shared_batch(serve) -> None:
    run = serve(EmbeddingsService)

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=run.url, timeout=60) as c:
            bodies = [{"model": "embeddings", "input": LONG if i == 3 else f"text {i}"}
                      for i in range(8)]
            return list(await asyncio.gather(
                *(c.post("/v1/embeddings", json=b) for b in bodies)))

    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200, 200, 200, 400, 200, 200, 200, 200]
    assert all(len(r.json()["data"][0]["embedding"]) == 384 for i, r in enumerate(rs)
               if i != 3)


class _Tok:
    def __init__(self, n: int) -> None:
        self.model_max_length = n


class _Model:
    def __init__(self, seq: object, tok: int) -> None:
        self.max_seq_length = seq
        self.tokenizer = _Tok(tok)


def test_max_input_tokens_falls_back_to_the_tokenizer() -> None:
    assert max_input_tokens(_Model(128, 512)) == 128
    assert max_input_tokens(_Model(None, 512)) == 512
    assert max_input_tokens(_Model(None, int(1e30))) is None  # transformers' "no limit"
