"""An OpenAI route the deployment does not serve (chat completions to an embeddings
model) is a 400 OpenAI error naming ``model`` and saying what the deployment serves,
answered before any replica is asked (before: the replica's bare 404)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from neocloud.gateway import GatewaySettings, Route, Upstream
from neocloud.gateway.static import StaticRouteTable
from neocloud.gateway.types import openai_paths_of

from .conftest import TOKEN_A, ReplicaState, ServerThread, make_replica, start_gateway


@pytest.fixture
def gateway() -> Iterator[tuple[str, ReplicaState]]:
    state = ReplicaState("r1")
    replica = ServerThread(make_replica(state)).start()
    up = Upstream("rep-r1", replica.url)
    routes = StaticRouteTable([
        Route("d-emb", "ws-a", "emb", (up,), serves=openai_paths_of("embeddings")),
        Route("d-chat", "ws-a", "chat", (up,), serves=openai_paths_of("chat")),
        Route("d-own", "ws-a", "own", (up,), serves=openai_paths_of("app.py:Mine")),
    ])
    _, server = start_gateway(routes, None, GatewaySettings(route_cache_ttl_s=0))
    try:
        yield server.url, state
    finally:
        server.stop()
        replica.stop()


def test_chat_completions_to_an_embeddings_model_is_a_400_naming_model(
        gateway: tuple[str, ReplicaState]) -> None:
    url, state = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key=TOKEN_A, max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="emb", messages=[{"role": "user", "content": "hi"}])
    err = exc.value.body
    assert isinstance(err, dict)
    assert err["param"] == "model" and err["code"] == "model_not_supported"
    assert err["message"] == ("the model 'emb' serves embeddings (POST /v1/embeddings), not "
                              "chat completions: POST /v1/chat/completions needs a deployment "
                              "that serves it")
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="chat", input=["hi"])
    assert exc.value.body["message"].startswith(  # type: ignore[index]
        "the model 'chat' serves chat completions (POST /v1/chat/completions) and "
        "completions (POST /v1/completions), not embeddings")
    assert state.hits == 0  # refused before a replica was asked
    # What a deployment serves still goes through; so does anything of a service of the
    # user's own (what it serves is not known).
    assert len(client.embeddings.create(model="emb", input=["hi"]).data) == 1
    client.chat.completions.create(model="own", messages=[{"role": "user", "content": "hi"}])
    assert state.hits == 2


def test_what_each_deployment_serves() -> None:
    assert openai_paths_of("embeddings") == ("/v1/embeddings",)
    assert openai_paths_of("chat") == ("/v1/chat/completions", "/v1/completions")
    assert openai_paths_of("chat", engine="vllm") is None
    assert openai_paths_of("app.py:Mine") is None and openai_paths_of(None) is None
