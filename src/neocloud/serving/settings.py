"""The settings of one replica process, read from its environment in one place.

The runner (:mod:`neocloud.serving.runner`) builds one :class:`ServingSettings` with
:meth:`ServingSettings.from_env` when the process starts and passes it down: to
:func:`neocloud.serving.app.build_app`, to the built-in services (their ``settings``
argument) and to the model loaders. Nothing else in the serving runtime reads
``NEOCLOUD_*`` variables; code used in-process without a runner (tests, notebooks) that
is given no settings builds them the same way.

Variables (unset or empty: the default):

===============================  =============================================================
``NEOCLOUD_SERVED_MODEL_NAME``   served model name (default: the service's own name)
``NEOCLOUD_MAX_BODY_BYTES``      largest request body, bytes (64 MiB); larger gets 413
``NEOCLOUD_GRACE_PERIOD_S``      seconds in-flight requests get after SIGTERM (30)
``NEOCLOUD_DEVICE``              torch device (``cuda`` when torch sees a GPU, else ``cpu``)
``NEOCLOUD_TORCH_THREADS``       torch intra-op threads (chat: chosen from step times, 1 or all)
``NEOCLOUD_DTYPE``               chat, either engine: ``float32`` or ``bfloat16`` (bfloat16 on
                                 CUDA and CPUs with native bf16, else float32)
``NEOCLOUD_MODEL_CACHE``         folder of converted checkpoints (``~/.cache/neocloud/models``)
``NEOCLOUD_MAX_BATCH_SIZE``      embeddings: largest batch (the service's default, 32)
``NEOCLOUD_MAX_WAIT_MS``         embeddings: longest wait for a batch to fill, ms (10)
``NEOCLOUD_MAX_NUM_SEQS``        chat: sequences decoded together (the engine's default)
``NEOCLOUD_MAX_PREFILL_TOKENS``  chat: prompt tokens prefilled per step (the engine's default)
``NEOCLOUD_KV_BUDGET_TOKENS``    chat: KV-cache size in tokens (sized from free memory)
``NEOCLOUD_FAST_FORWARD``        chat: ``0`` runs Llama models through transformers' forward
                                 instead of the engine's own (``1``)
``NEOCLOUD_COMPILE``             chat: ``1`` compiles the engine's own forward with
                                 ``torch.compile`` at start (``0``)
``NEOCLOUD_VLLM_PYTHON``         vLLM engine: its interpreter
``NEOCLOUD_VLLM_VENV``           vLLM engine: its virtual environment (``bin/python`` in it)
===============================  =============================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Largest accepted request body (bytes) unless ``NEOCLOUD_MAX_BODY_BYTES`` says otherwise.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: Seconds in-flight requests get after SIGTERM unless ``NEOCLOUD_GRACE_PERIOD_S`` says
#: otherwise.
DEFAULT_GRACE_PERIOD_S = 30.0


def _default_model_cache() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "neocloud", "models")


@dataclass(frozen=True, slots=True)
class ServingSettings:
    """What a replica process is told by its environment (see the module doc for the
    variable of each field). ``None`` means "the default of whoever uses it".

    Attributes:
        served_model_name: the served model name.
        max_body_bytes: largest request body accepted, bytes.
        grace_period_s: seconds in-flight requests get after SIGTERM.
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        torch_threads: torch intra-op thread count.
        model_cache: folder of converted checkpoints.
        max_batch_size: embeddings batch size limit (inputs).
        max_wait_ms: embeddings batch fill wait, milliseconds.
        max_num_seqs: chat engine sequences per decode step.
        max_prefill_tokens: chat engine prompt tokens per prefill step.
        kv_budget_tokens: chat engine KV-cache size, tokens.
        prefix_cache_tokens: chat engine prefix cache size, tokens (0: off).
        dtype: chat model dtype name (``float32``, ``bfloat16``).
        fast_forward: chat engine runs Llama models through its own forward.
        compile: chat engine compiles its own forward at start.
        vllm_python: interpreter of the vLLM environment.
        vllm_venv: virtual environment of vLLM.
    """

    served_model_name: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S
    device: str | None = None
    torch_threads: int | None = None
    model_cache: str = field(default_factory=_default_model_cache)
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    max_num_seqs: int | None = None
    max_prefill_tokens: int | None = None
    kv_budget_tokens: int | None = None
    prefix_cache_tokens: int | None = None
    dtype: str | None = None
    fast_forward: bool | None = None
    compile: bool | None = None
    vllm_python: str | None = None
    vllm_venv: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        """Settings from ``env`` (default: ``os.environ``); unset or empty values keep the
        defaults.

        Raises:
            ValueError: a numeric variable is not a number, or a switch not ``0``/``1``
                (the message names it).
        """
        e = os.environ if env is None else env

        def text(name: str) -> str | None:
            return e.get(name) or None

        def number(name: str, kind: type[int] | type[float]) -> int | float | None:
            raw = e.get(name)
            if not raw:
                return None
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None

        def integer(name: str) -> int | None:
            value = number(name, int)
            return None if value is None else int(value)

        def flag(name: str) -> bool | None:
            raw = (e.get(name) or "").strip().lower()
            if not raw:
                return None
            if raw in ("1", "true", "yes", "on"):
                return True
            if raw in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name}={raw!r} is not 0 or 1")

        body = integer("NEOCLOUD_MAX_BODY_BYTES")
        grace = number("NEOCLOUD_GRACE_PERIOD_S", float)
        wait = number("NEOCLOUD_MAX_WAIT_MS", float)
        return cls(
            served_model_name=text("NEOCLOUD_SERVED_MODEL_NAME"),
            max_body_bytes=body or DEFAULT_MAX_BODY_BYTES,
            grace_period_s=DEFAULT_GRACE_PERIOD_S if grace is None else float(grace),
            device=text("NEOCLOUD_DEVICE"),
            torch_threads=integer("NEOCLOUD_TORCH_THREADS"),
            model_cache=text("NEOCLOUD_MODEL_CACHE") or _default_model_cache(),
            max_batch_size=integer("NEOCLOUD_MAX_BATCH_SIZE"),
            max_wait_ms=None if wait is None else float(wait),
            max_num_seqs=integer("NEOCLOUD_MAX_NUM_SEQS"),
            max_prefill_tokens=integer("NEOCLOUD_MAX_PREFILL_TOKENS"),
            kv_budget_tokens=integer("NEOCLOUD_KV_BUDGET_TOKENS"),
            prefix_cache_tokens=integer("NEOCLOUD_PREFIX_CACHE_TOKENS"),
            dtype=text("NEOCLOUD_DTYPE"),
            fast_forward=flag("NEOCLOUD_FAST_FORWARD"),
            compile=flag("NEOCLOUD_COMPILE"),
            vllm_python=text("NEOCLOUD_VLLM_PYTHON"),
            vllm_venv=text("NEOCLOUD_VLLM_VENV"),
        )
