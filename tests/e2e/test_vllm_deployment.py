"""A deployment of engine ``vllm`` on a real local cloud (``neocloud up``): the control plane
starts vLLM's OpenAI server from the engine environment of ``make install-vllm``, waits for
it, routes ``/v1/*`` to it through the gateway for the official OpenAI client (streamed and
not), and bills the tokens it generated."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from neocloud import Client
from neocloud.serving.engines.vllm import EngineNotInstalled, engine_python
from tests.e2e.cloudproc import CloudProcess

pytestmark = pytest.mark.slow

#: Seconds vLLM may take to start on CPU (it compiles and profiles; bounded).
READY_TIMEOUT_S = 1200


def _engine_or_skip() -> None:
    try:
        engine_python()
    except EngineNotInstalled as exc:
        pytest.skip(f"vLLM engine environment absent (`make install-vllm`): {exc}")


@pytest.mark.timeout(READY_TIMEOUT_S + 300)
def test_vllm_deployment_serves_openai_client_and_is_metered(tmp_path: Path) -> None:
    from openai import OpenAI

    _engine_or_skip()
    cloud = CloudProcess(tmp_path / "home").start()
    try:
        sdk = Client(url=cloud.url, token=cloud.token)
        dep = sdk.deployments.create("chat-vllm", engine="vllm", shape="cpu.small")
        assert dep.engine.value == "vllm" and dep.service is None
        dep = sdk.deployments.wait_ready("chat-vllm", timeout_s=READY_TIMEOUT_S)
        assert dep.ready_replicas == 1
        oai = OpenAI(base_url=f"{cloud.url}/v1", api_key=cloud.token, max_retries=0)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        resp = oai.chat.completions.create(model="chat-vllm", messages=messages,
                                           max_tokens=12, temperature=0)
        text = resp.choices[0].message.content or ""
        assert text.strip() and resp.usage is not None
        assert 0 < resp.usage.completion_tokens <= 12
        chunks = list(oai.chat.completions.create(
            model="chat-vllm", messages=messages, max_tokens=12, temperature=0, stream=True,
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
            time.sleep(1)
        assert line is not None, "no tokens were metered"
        assert (line.prompt_tokens, line.completion_tokens, line.requests) == (
            want_prompt, want_completion, 2)
        assert sdk.deployments.get("chat-vllm").status.value == "ready"
        sdk.deployments.delete("chat-vllm")
    finally:
        assert cloud.stop() == 0
