"""A deployment of engine ``vllm`` on a real local cloud (``neocloud up``): the control plane
starts vLLM's OpenAI server from the engine environment of ``make install-vllm``, waits for
it, routes ``/v1/*`` to it through the gateway for the official OpenAI client (streamed and
not), and bills the tokens it generated.

The cloud and its deployment are the session's shared ones (``vllm_cloud``, see
:mod:`tests.vllm_server`): it is created, waited for, deleted and stopped once."""

from __future__ import annotations

import time

import pytest

from tests.vllm_server import READY_TIMEOUT_S, VllmCloud

pytestmark = pytest.mark.slow  # one pytest-xdist group, "vllm" (tests/conftest.py)


@pytest.mark.timeout(READY_TIMEOUT_S + 300)  # vLLM's start is counted in the first user
def test_vllm_deployment_serves_openai_client_and_is_metered(vllm_cloud: VllmCloud) -> None:
    from openai import OpenAI

    sdk, name = vllm_cloud.sdk, vllm_cloud.name
    assert vllm_cloud.created.engine.value == "vllm" and vllm_cloud.created.service is None
    assert vllm_cloud.ready.ready_replicas == 1
    oai = OpenAI(base_url=f"{vllm_cloud.url}/v1", api_key=vllm_cloud.token, max_retries=0)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    resp = oai.chat.completions.create(model=name, messages=messages,
                                       max_tokens=12, temperature=0)
    text = resp.choices[0].message.content or ""
    assert text.strip() and resp.usage is not None
    assert 0 < resp.usage.completion_tokens <= 12
    chunks = list(oai.chat.completions.create(
        model=name, messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: the same text either way
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    want_prompt = resp.usage.prompt_tokens + usage[0].prompt_tokens
    want_completion = resp.usage.completion_tokens + usage[0].completion_tokens
    deadline = time.monotonic() + 60
    line = None
    while time.monotonic() < deadline:
        tokens = [ln for ln in sdk.usage.bill().lines if ln.kind == "tokens"]
        line = tokens[0] if tokens else None
        if line is not None and line.requests >= 2:
            break
        time.sleep(0.2)
    assert line is not None, "no tokens were metered"
    assert (line.prompt_tokens, line.completion_tokens, line.requests) == (
        want_prompt, want_completion, 2)
    assert sdk.deployments.get(name).status.value == "ready"
