"""One settings object per replica: read from the environment once, passed down to the
app and the built-in services."""

from __future__ import annotations

import pytest

from neocloud.serving.app import build_app
from neocloud.serving.service import Service, endpoint
from neocloud.serving.settings import (
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_MAX_BODY_BYTES,
    ServingSettings,
)


def test_defaults_when_unset_or_empty() -> None:
    s = ServingSettings.from_env({"NEOCLOUD_DEVICE": "", "NEOCLOUD_MAX_BODY_BYTES": ""})
    assert s.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert s.grace_period_s == DEFAULT_GRACE_PERIOD_S
    assert s.device is None and s.served_model_name is None and s.kv_budget_tokens is None
    assert s.model_cache.endswith("models")


def test_every_variable_is_read() -> None:
    s = ServingSettings.from_env({
        "NEOCLOUD_SERVED_MODEL_NAME": "m", "NEOCLOUD_MAX_BODY_BYTES": "123",
        "NEOCLOUD_GRACE_PERIOD_S": "0", "NEOCLOUD_DEVICE": "cuda:1",
        "NEOCLOUD_TORCH_THREADS": "3", "NEOCLOUD_MODEL_CACHE": "/c",
        "NEOCLOUD_MAX_BATCH_SIZE": "7", "NEOCLOUD_MAX_WAIT_MS": "2.5",
        "NEOCLOUD_MAX_NUM_SEQS": "4", "NEOCLOUD_MAX_PREFILL_TOKENS": "64",
        "NEOCLOUD_KV_BUDGET_TOKENS": "2048", "NEOCLOUD_VLLM_PYTHON": "/p",
        "NEOCLOUD_VLLM_VENV": "/v", "NEOCLOUD_FAST_FORWARD": "0", "NEOCLOUD_COMPILE": "1",
    })
    assert s == ServingSettings(
        served_model_name="m", max_body_bytes=123, grace_period_s=0.0, device="cuda:1",
        torch_threads=3, model_cache="/c", max_batch_size=7, max_wait_ms=2.5, max_num_seqs=4,
        max_prefill_tokens=64, kv_budget_tokens=2048, vllm_python="/p", vllm_venv="/v",
        fast_forward=False, compile=True)


def test_a_bad_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="NEOCLOUD_MAX_BATCH_SIZE"):
        ServingSettings.from_env({"NEOCLOUD_MAX_BATCH_SIZE": "lots"})
    with pytest.raises(ValueError, match="NEOCLOUD_COMPILE"):
        ServingSettings.from_env({"NEOCLOUD_COMPILE": "maybe"})


class _Echo(Service):
    def __init__(self, settings: ServingSettings | None = None) -> None:
        self.given = settings

    @endpoint(path="/echo")
    def echo(self, text: str) -> str:
        return text


class _Plain(Service):
    @endpoint(path="/echo")
    def echo(self, text: str) -> str:
        return text


def test_build_app_passes_the_settings_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEOCLOUD_SERVED_MODEL_NAME", "from-env")  # not read: settings given
    settings = ServingSettings(served_model_name="given", max_body_bytes=99)
    app = build_app(_Echo, settings=settings)
    assert app.settings is settings and app.max_body_bytes == 99
    assert app.service.given is settings and app.service.name == "given"
    plain = build_app(_Plain, settings=settings)  # a service without the parameter
    assert plain.service.name == "given"


def test_without_settings_the_environment_is_read_once(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setenv("NEOCLOUD_SERVED_MODEL_NAME", "from-env")
    monkeypatch.setenv("NEOCLOUD_MAX_BODY_BYTES", "77")
    app = build_app(_Echo)
    assert app.service.name == "from-env" and app.max_body_bytes == 77
    assert app.service.given is app.settings


def test_builtin_embeddings_takes_its_batch_limits_from_the_settings() -> None:
    from neocloud.serving.builtin.embeddings import EmbeddingsService

    svc = EmbeddingsService(ServingSettings(max_batch_size=5, max_wait_ms=4.0))
    assert svc.encode.max_batch_size == 5 and svc.encode.max_wait_s == pytest.approx(0.004)
