"""A vLLM replica (engine environment from ``make install-vllm``) serving the shipped
SmolLM2 through the gateway to the official OpenAI client: the converted checkpoint gives
vLLM the same greedy text as the built-in engine, and vLLM's metrics map onto ours.

The replica is the one of the session's shared vLLM deployment (``vllm_cloud``, see
:mod:`tests.vllm_server`): the launcher ``python -m neocloud.serving.engines.vllm`` as the
control plane starts it, reached here through a gateway of this test's own."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from tests.vllm_server import READY_TIMEOUT_S, VLLM_DTYPE, VllmCloud

from neocloud.serving.engine_metrics import GENERATION_TOKENS, RUNNING, TTFT, translate_vllm
from neocloud.serving.engines.vllm import EngineNotInstalled, launch

pytestmark = pytest.mark.slow  # one pytest-xdist group, "vllm" (tests/conftest.py)


def test_missing_environment_is_a_400_naming_the_step(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("NEOCLOUD_VLLM_VENV", str(tmp_path / "nowhere"))
    with pytest.raises(EngineNotInstalled) as exc:
        launch(port=1, model="m")
    assert exc.value.status == 400 and "make install-vllm" in str(exc.value)
    assert exc.value.code == "engine_not_installed"


def test_launch_passes_extra_arguments_to_vllm(tmp_path) -> None:
    spec = launch(port=8001, model=str(tmp_path), name="chat", python="/bin/python3",
                  kv_cache_gib=1.5, max_model_len=2048, extra_args=["--enforce-eager"])
    assert spec.argv == ["/bin/python3", "-m", "vllm.entrypoints.openai.api_server",
                         "--model", str(tmp_path), "--host", "127.0.0.1", "--port", "8001",
                         "--served-model-name", "chat", "--max-model-len", "2048",
                         "--enforce-eager"]
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == "1.5"


def test_the_platform_dtype_reaches_vllm(tmp_path) -> None:
    # NEOCLOUD_DTYPE chose the built-in engine's numerics only: vLLM kept its own "auto"
    # (bfloat16 on a CPU with native bf16), so the same setting gave two engines two dtypes
    spec = launch(port=8001, model=str(tmp_path), python="/bin/python3", dtype="float32")
    assert spec.argv[-2:] == ["--dtype", "float32"]
    assert "--dtype" not in launch(port=8001, model=str(tmp_path), python="/bin/python3").argv
    with pytest.raises(ValueError, match="NEOCLOUD_DTYPE"):
        launch(port=8001, model=str(tmp_path), python="/bin/python3", dtype="float16")


def test_vllm_metric_names_map_onto_ours() -> None:
    text = "\n".join([
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="chat"} 3.0',
        'vllm:generation_tokens_total{engine="0",model_name="chat"} 120.0',
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="chat"} 2.0',
        'vllm:time_to_first_token_seconds_count{engine="0",model_name="chat"} 4.0',
        "process_cpu_seconds_total 9.0",
    ])
    out = translate_vllm(text)
    assert f"{RUNNING} 3" in out and f"{GENERATION_TOKENS} 120" in out
    assert f'{TTFT}_bucket{{le="0.5"}} 2' in out and f"{TTFT}_count 4" in out
    assert "process_cpu" not in out


@pytest.mark.timeout(READY_TIMEOUT_S + 300)  # vLLM's start is counted in the first user
def test_vllm_replica_serves_the_official_client_through_the_gateway(
        vllm_cloud: VllmCloud) -> None:
    from neocloud.gateway import GatewaySettings, Route, Upstream
    from neocloud.gateway.static import StaticRouteTable
    from neocloud.serving.textgen.engine import SamplingParams, TextGenerator, run_to_end
    from neocloud.serving.textgen.loading import load_causal_lm

    from ..gateway.conftest import TOKEN_A, ListSink, start_gateway

    vllm_replica, served = vllm_cloud.replica_url, vllm_cloud.name
    routes = StaticRouteTable([Route("d-v", "ws-a", served, (Upstream("v-1", vllm_replica),))])
    sink = ListSink()
    _, server = start_gateway(routes, sink, GatewaySettings(route_cache_ttl_s=0))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN_A, max_retries=0,
                               timeout=300)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        r = client.chat.completions.create(model=served, messages=messages, max_tokens=10,
                                           temperature=0)
        text = r.choices[0].message.content or ""
        chunks = list(client.chat.completions.create(model=served, messages=messages,
                                                     max_tokens=10, temperature=0, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text and "paris" in text.lower()
        assert all(c.usage is None for c in chunks)  # not asked for: not shown
        # ...yet metered with vLLM's own count (through the replica's adapter)
        n = r.usage.completion_tokens
        for _ in range(1000):  # bounded: 10 s for the look-up after the stream
            if len([rec for rec in sink.records if rec.completion_tokens == n]) == 2:
                break
            time.sleep(0.01)
        assert [rec.completion_tokens for rec in sink.records] == [n, n]
        model, tok, _ = load_causal_lm(None, device="cpu", dtype=VLLM_DTYPE)
        g = TextGenerator(model, tok)
        try:
            import asyncio

            ours, _, _ = asyncio.run(run_to_end(
                g, g.chat_prompt(messages), SamplingParams(max_tokens=10, temperature=0)))
        finally:
            g.close()
        assert ours[0] == text  # the same checkpoint and dtype, the same greedy text
    finally:
        server.stop()
    metrics = httpx.get(vllm_replica + "/metrics", timeout=30).text
    assert f"{GENERATION_TOKENS} " in metrics and f"{RUNNING} " in metrics  # our names
