"""Commands that run things on this machine: ``up``, ``server``, ``serve``, ``simulate``.

Each imports its implementation on use, so the other commands start fast and work without
the server or model-runtime dependencies installed.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import typer
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.output import print_json, table
from neocloud.cli.params import host_port
from neocloud.config import DEFAULT_HOST, DEFAULT_PORT
from neocloud.errors import InvalidRequest, NeocloudError, Unsupported

#: The code of the error a control-plane setting that does not parse raises
#: (``neocloud.server.settings.InvalidSetting``; the CLI does not import the server).
INVALID_SETTING = "invalid_setting"


def _load(module: str, purpose: str) -> ModuleType:
    """Import ``module``; a missing dependency becomes a clear ``Unsupported`` error."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise Unsupported(
            f"{purpose} needs the module {exc.name!r}, which is not installed "
            "(install neocloud with its extras, e.g. pip install 'neocloud[models]')"
        ) from exc


@contextmanager
def settings_as_usage_errors() -> Iterator[None]:
    """Turn a ``NEOCLOUD_*`` variable that does not parse into a usage error naming it
    (exit code 2), like a bad option."""
    try:
        yield
    except NeocloudError as exc:
        if exc.code != INVALID_SETTING:
            raise
        name = exc.param or "environment"
        raise typer.BadParameter(exc.message.removeprefix(f"{name}="), param_hint=name) from None


def up(
    host: str | None = typer.Option(
        None,
        "--host",
        help=f"Address to listen on (default: NEOCLOUD_HOST or {DEFAULT_HOST}).",
        show_default=False,
    ),
    port: int | None = typer.Option(
        None,
        "--port",
        min=1,
        max=65535,
        help=f"TCP port (default: NEOCLOUD_PORT or {DEFAULT_PORT}).",
        show_default=False,
    ),
    home: Path | None = typer.Option(
        None,
        "--home",
        help="Data folder (default: NEOCLOUD_HOME or ~/.neocloud).",
        show_default=False,
    ),
    backend: str | None = typer.Option(
        None,
        "--backend",
        help="Where replicas run: local or ray (default: local).",
        show_default=False,
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="With --backend ray: the Ray cluster's GCS address HOST:PORT (default: "
        "NEOCLOUD_RAY_ADDRESS or auto, the cluster this machine is part of).",
        show_default=False,
    ),
) -> None:
    """Start a local cloud in the foreground and log this CLI in to it.

    Runs the control plane, the gateway and the local backend until Ctrl-C or SIGTERM,
    which stop every replica it started.
    """
    if backend is not None and backend not in ("local", "ray"):
        raise typer.BadParameter(f"must be local or ray, not {backend!r}", param_hint="'--backend'")
    if ray_address is not None:
        if backend != "ray":
            raise typer.BadParameter("needs --backend ray", param_hint="'--ray-address'")
        if ray_address != "auto" and host_port(ray_address) is None:
            raise typer.BadParameter(f"must be HOST:PORT or auto, not {ray_address!r}",
                                     param_hint="'--ray-address'")
    if (backend or os.environ.get("NEOCLOUD_BACKEND")) == "ray":
        check_ray_backend(ray_address)
    launch = _load("neocloud.server.launch", "`neocloud up`")
    with settings_as_usage_errors():
        launch.up(host, port, home.expanduser() if home else None, backend,
                  ray_address=ray_address)


def check_ray_backend(ray_address: str | None) -> None:
    """Check what the ``ray`` backend needs before ``up`` creates or prints anything:
    Ray importable, and ``NEOCLOUD_RAY_ADDRESS`` (when ``--ray-address`` is not given)
    ``HOST:PORT`` or ``auto``.

    Raises:
        Unsupported: Ray is not installed (said how to install it).
        typer.BadParameter: ``NEOCLOUD_RAY_ADDRESS`` does not read as an address.
    """
    try:
        importlib.import_module("ray")
    except ImportError:
        raise Unsupported(
            "the ray backend needs Ray, which is not installed: pip install 'neocloud[ray]' "
            "(in a checkout: .venv/bin/pip install -e '.[ray]')") from None
    env = os.environ.get("NEOCLOUD_RAY_ADDRESS")
    if ray_address is None and env and env != "auto" and host_port(env) is None:
        raise typer.BadParameter(f"must be HOST:PORT or auto, not {env!r}",
                                 param_hint="NEOCLOUD_RAY_ADDRESS")


def server(
    host: str | None = typer.Option(
        None,
        "--host",
        help=f"Address to listen on (default: NEOCLOUD_HOST or {DEFAULT_HOST}).",
        show_default=False,
    ),
    port: int | None = typer.Option(
        None,
        "--port",
        min=1,
        max=65535,
        help=f"TCP port (default: NEOCLOUD_PORT or {DEFAULT_PORT}).",
        show_default=False,
    ),
) -> None:
    """Run the control plane only (settings from NEOCLOUD_* environment variables)."""
    launch = _load("neocloud.server.launch", "`neocloud server`")
    with settings_as_usage_errors():
        launch.serve(host, port)


def serve(
    service: str = typer.Argument(
        ..., help="embeddings, chat, package.module:Class or file.py:Class."
    ),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="TCP port."),
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to listen on."),
    name: str | None = typer.Option(None, "--name", help="Model name to answer to."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model of a built-in service."),
    workers: int = typer.Option(1, "--workers", min=1, help="Server processes."),
    reload: bool = typer.Option(False, "--reload", help="Restart when the code changes."),
) -> None:
    """Serve a model service on this machine, without a control plane."""
    runner = _load("neocloud.serving.runner", "`neocloud serve`")
    loader = _load("neocloud.serving.loader", "`neocloud serve`")
    try:
        loader.resolve_service(service)  # a bad reference is a usage error, said at once
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'SERVICE'") from None
    runner.run(
        service, host=host, port=port, name=name, model=model, workers=workers, reload=reload
    )


def simulate(
    nodes: Path = typer.Option(..., "--nodes", exists=True, dir_okay=False, help="Nodes CSV."),
    pods: Path = typer.Option(..., "--pods", exists=True, dir_okay=False, help="Pods CSV."),
    policy: str = typer.Option(
        ..., "--policy",
        help="Scheduling policy: default (ours), fgd, best-fit, first-fit or random.",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Replay a cluster trace through a scheduling policy (no control plane needed).

    NODES is an openb node list (columns sn,cpu_milli,memory_mib,gpu,model) or a YAML node
    list; PODS an openb pod list (name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,...).
    Pods arrive in order, then are sampled again until 130 % of the GPUs are asked for.
    """
    from neocloud.server.scheduler import POLICIES

    if policy not in POLICIES:
        raise typer.BadParameter(
            f"unknown policy {policy!r}; known: {', '.join(sorted(POLICIES))}",
            param_hint="'--policy'")
    sim = _load("neocloud.simulate", "`neocloud simulate`")
    try:
        result = sim.simulate_fgd_protocol(nodes, pods, policy=policy, seed=seed)
    except ValueError as exc:  # unknown policy or malformed files
        raise InvalidRequest(str(exc)) from exc
    if json_out:
        print_json(result)
        return
    rows = [(key, _compact(value)) for key, value in result.items()]
    output.out.print(Text(f"Simulation: policy {policy}, seed {seed}", style="bold"))
    output.out.print(table(("METRIC", "VALUE"), rows))


def _compact(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        import json

        text = json.dumps(value, default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(server)
    app.command()(serve)
    app.command()(simulate)
