"""``neocloud node join`` and ``node drain``: servers join the cloud and leave it.

``node join CONTROL_PLANE_URL --token T`` on a server: checks that the token is an
operator's and that the control plane's volumes folder is reachable here at the same path
(a marker file it writes there is read back: jobs and pods work in that folder), discovers
the server's CPUs, memory and GPUs (NVML), starts a Ray node on it
that joins the cloud's Ray cluster (``ray start --address ...``, labelled
``neocloud.io/node=<name>`` so the Ray backend places this node's work there), and
registers the node with the control plane with its Ray node id. With ``--head`` it starts
the cluster's head instead, at ``--ray-address HOST:PORT`` (default port 6379), once it has
checked that the port is free. With ``--block`` it stays in the foreground with the Ray
node and stops it on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import typer
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.params import host_port, parse_gpu, parse_labels
from neocloud.errors import NeocloudError, PermissionDenied, Unavailable
from neocloud.models import GpuSpec, NodeOut
from neocloud.models.nodes_join import NodeJoin

#: Ray node label carrying the neocloud node name (read by the Ray backend).
NODE_LABEL = "neocloud.io/node"
#: Seconds to wait for the new Ray node to show up alive in the cluster.
JOIN_TIMEOUT_S = 90.0
#: TCP port of a head's GCS when ``--ray-address`` does not give one (Ray's default).
DEFAULT_HEAD_PORT = 6379


def ray_start_command(*, ray_address: str | None, node_ip: str, name: str,
                      labels: dict[str, str], num_gpus: int | None, head: bool,
                      block: bool, extra: list[str],
                      head_port: int = DEFAULT_HEAD_PORT) -> list[str]:
    """The ``ray start`` command line of this server (Ray from this interpreter's
    environment, so workloads run with the same Python and neocloud); a head listens on
    ``head_port`` (TCP)."""
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "start", f"--node-ip-address={node_ip}", "--disable-usage-stats",
           "--labels=" + ",".join(f"{k}={v}" for k, v in {**labels, NODE_LABEL: name}.items())]
    cmd += ["--head", f"--port={head_port}"] if head else [f"--address={ray_address}"]
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    if block:
        cmd.append("--block")
    return cmd + extra


def local_address(toward: str) -> str:
    """The address of this machine on the route toward ``toward`` (``host[:port]``)."""
    host = toward.rsplit(":", 1)[0] if toward.count(":") == 1 else toward
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def head_address(ray_address: str | None, node_ip: str | None, toward: str) -> tuple[str, int]:
    """The ``(address, TCP port)`` a head started here listens on: ``ray_address``
    (``HOST:PORT``) when given, else ``node_ip`` (default: this machine's address on the
    route toward ``toward``) and :data:`DEFAULT_HEAD_PORT`.

    Raises:
        typer.BadParameter: ``ray_address`` is not ``HOST:PORT`` (port 1..65535), or its
            host is not ``node_ip``.
    """
    if not ray_address:
        return node_ip or local_address(toward), DEFAULT_HEAD_PORT
    parsed = host_port(ray_address)
    if parsed is None:
        raise typer.BadParameter(
            f"with --head it is the head's HOST:PORT, e.g. 10.0.0.1:6380, not {ray_address!r}",
            param_hint="'--ray-address'")
    host, port = parsed
    if node_ip and node_ip != host:
        raise typer.BadParameter(
            f"with --head the head listens on --ray-address's host ({host}), not {node_ip}",
            param_hint="'--node-ip'")
    return host, port


def check_port_free(address: str, port: int) -> None:
    """Fail before ``ray start --head`` when TCP ``port`` is already bound on ``address``
    or on any other address of this machine (Ray's GCS would fail with "Failed to start
    the grpc server").

    Raises:
        Unavailable: the port is taken (said how to pick another).
    """
    for host in (address, "0.0.0.0"):
        problem = _bind_problem(host, port)
        if problem is not None and problem.errno == errno.EADDRINUSE:
            other = port + 1 if port < 65535 else DEFAULT_HEAD_PORT + 1
            raise Unavailable(
                f"port {port} is already in use on {address} (another program listens "
                f"there); choose the head's port with --ray-address {address}:PORT, e.g. "
                f"--ray-address {address}:{other}")
        if problem is not None and host == address:
            raise Unavailable(
                f"cannot start the Ray head at {address}:{port}: {problem.strerror or problem}; "
                "give one of this machine's addresses with --ray-address HOST:PORT")


def _bind_problem(host: str, port: int) -> OSError | None:
    """Why a TCP socket cannot bind ``(host, port)``, or None if it can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def ray_node_id(address: str, node_ip: str, name: str, proc: subprocess.Popen[bytes] | None,
                timeout_s: float = JOIN_TIMEOUT_S) -> str:
    """The id of the alive Ray node labelled ``neocloud.io/node=name``, asked as a Ray
    driver on this server, once it is up.

    Raises:
        Unavailable: the node did not come up in ``timeout_s`` or ``ray start`` exited.
    """
    import ray

    deadline = time.monotonic() + timeout_s
    ray.init(address=address, _node_ip_address=node_ip, log_to_driver=False,
             configure_logging=False, logging_level=logging.ERROR)
    try:
        while time.monotonic() < deadline:
            for n in ray.nodes():
                if n.get("Alive") and (n.get("Labels") or {}).get(NODE_LABEL) == name:
                    return str(n["NodeID"])
            if proc is not None and proc.poll() is not None:
                raise Unavailable(f"ray start exited with code {proc.returncode}")
            time.sleep(0.5)
    finally:
        ray.shutdown()
    raise Unavailable(f"the Ray node of {name} did not come up within {timeout_s:g} s")


def _require_operator(cloud: Any) -> None:
    me = cloud.whoami()
    if not (me.workspace.operator and me.token.role.value == "admin"):
        raise PermissionDenied(
            "joining a node needs an operator token (an admin token of an operator "
            f"workspace); this one is {me.token.role.value} in {me.workspace.name}")


def join(
    url: str = typer.Argument(..., help="Control plane URL, e.g. http://10.0.0.1:8700."),
    token: str = typer.Option(..., "--token", envvar="NEOCLOUD_TOKEN",
                              help="Operator token (admin of an operator workspace)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", envvar="RAY_ADDRESS",
        help="The cloud's Ray cluster (GCS HOST:PORT); with --head, the address and port "
        "the head listens on (default: this server's address, port 6379)."),
    head: bool = typer.Option(
        False, "--head", help="Start the Ray cluster's head here (on the port of "
        "--ray-address, default 6379; refused if that port is taken)."),
    name: str | None = typer.Option(None, "--name", help="Node name (default: host name)."),
    node_ip: str | None = typer.Option(
        None, "--node-ip", help="This server's address in the cluster (default: the one "
        "on the route to the Ray address)."),
    pool: str | None = typer.Option(None, "--pool", help="Node pool."),
    labels: list[str] | None = typer.Option(None, "--labels", "--label",
                                            help="KEY=VALUE (repeatable)."),
    price_per_hour: float | None = typer.Option(
        None, "--price-per-hour", min=0, help="What the server costs per hour (USD)."),
    gpu: str | None = typer.Option(
        None, "--gpu", help="GPUs as TYPE:COUNT:MEMORY_MIB instead of what NVML finds "
        "(e.g. simulated GPUs)."),
    block: bool = typer.Option(False, "--block",
                               help="Stay in the foreground with the Ray node."),
    ray_arg: list[str] | None = typer.Option(
        None, "--ray-arg", help="Extra argument for `ray start` (repeatable), e.g. "
        "--ray-arg=--object-store-memory=1000000000."),
    json_out: bool = typer.Option(False, "--json", help="Print the node as JSON."),
    shared_check: bool = typer.Option(
        True, "--shared-check/--no-shared-check",
        help="Check that the control plane's volumes folder is reachable here at the same "
        "path (jobs and pods work in it); skip only for a server that runs neither."),
) -> None:
    """Join this server to the cloud: start its Ray node and register it."""
    from neocloud.sdk.client import Client
    from neocloud.server.backends.discovery import discover_machine, node_name

    if not head and not ray_address:
        raise typer.BadParameter("give the Ray cluster's address (or --head)",
                                 param_hint="'--ray-address'")
    user_labels = parse_labels(labels, option="--labels") if labels else {}
    gpus_override: GpuSpec | None = parse_gpu(gpu, option="--gpu") if gpu else None
    try:
        import ray  # noqa: F401
    except ImportError:
        raise Unavailable("Ray is not installed here: pip install 'neocloud[ray]'") from None
    url_host = url.split("//", 1)[-1].split("/")[0]
    head_port = DEFAULT_HEAD_PORT
    if head:
        if any(a == "--port" or a.startswith("--port=") for a in ray_arg or ()):
            raise typer.BadParameter("give the head's port with --ray-address HOST:PORT",
                                     param_hint="'--ray-arg'")
        node_ip, head_port = head_address(ray_address, node_ip, url_host)
        check_port_free(node_ip, head_port)
    with Client(url, token) as cloud:
        _require_operator(cloud)
        if shared_check:
            _check_shared_folder(cloud)
        machine = discover_machine(with_gpus=gpus_override is None)
        name = name or node_name()
        gpus = [gpus_override] if gpus_override else _group(machine.gpus)
        ip = node_ip or local_address(ray_address or url_host)
        spec = NodeJoin.model_validate(dict(
            name=name, address=ip, ray_node_id="0" * 16, cpu_milli=machine.cpu_milli,
            memory_mib=machine.memory_mib, gpus=[g.model_dump() for g in gpus],
            labels=user_labels, pool=pool, price_per_hour_usd=price_per_hour))
        cmd = ray_start_command(ray_address=ray_address, node_ip=ip, name=name,
                                labels=user_labels, num_gpus=sum(g.count for g in gpus),
                                head=head, block=block, extra=list(ray_arg or ()),
                                head_port=head_port)
        proc = _start_ray(cmd, block=block)
        try:
            gcs = f"{ip}:{head_port}" if head else str(ray_address)
            spec = spec.model_copy(update={"ray_node_id": ray_node_id(gcs, ip, name, proc)})
            node = cloud.nodes.join(spec)
        except (NeocloudError, KeyboardInterrupt):
            if proc is not None:
                _stop(proc)
            raise
        _print(node, spec, json_out)
    if proc is not None:
        _wait(proc)


def _check_shared_folder(cloud: Any) -> None:
    """Read back, at the same path, the marker the control plane just wrote into its
    volumes folder.

    Raises:
        Unavailable: this server does not share that folder (said how to fix it).
    """
    from neocloud.server.services.shared_fs import check_marker

    check = cloud.nodes.join_check()
    if check.path is None or check.token is None:
        return  # the cloud keeps no volume files in a folder
    problem = check_marker(check.path, check.token)
    if problem is not None:
        raise Unavailable(problem)


def _group(gpus: list[dict[str, Any]]) -> list[GpuSpec]:
    """NVML's per-device list as one :class:`GpuSpec` (a node has one GPU type)."""
    if not gpus:
        return []
    return [GpuSpec(type=gpus[0]["type"], count=len(gpus),
                    memory_mib=min(g["memory_mib"] for g in gpus))]


def _start_ray(cmd: list[str], *, block: bool) -> subprocess.Popen[bytes] | None:
    """Run ``ray start``: to completion (it leaves its node running), or with ``--block``
    as a child process that is returned."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEOCLOUD_")}
    full_env["RAY_USAGE_STATS_ENABLED"] = "0"
    if block:
        return subprocess.Popen(cmd, env=full_env, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    done = subprocess.run(cmd, env=full_env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise Unavailable(f"ray start failed (exit code {done.returncode}): "
                          f"{(done.stderr or done.stdout).strip()[-800:]}")
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait(proc: subprocess.Popen[bytes]) -> None:
    """Until the Ray node ends; SIGTERM or Ctrl-C here pass SIGTERM on to it (SIGKILL if
    it has not ended 30 s later)."""
    stopping: list[float] = []

    def forward(sig: int, _frame: FrameType | None) -> None:
        if not stopping and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        stopping.append(time.monotonic())

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            code = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0] > 30:
                proc.kill()
    if code not in (0, -signal.SIGTERM) and not stopping:
        raise typer.Exit(1)


def _print(node: NodeOut, spec: NodeJoin, json_out: bool) -> None:
    if json_out:
        output.print_json(node)
        return
    gpus = f"{len(node.gpus)}x{node.gpus[0].type}" if node.gpus else "no GPUs"
    lines = [f"Joined node {node.name} ({node.status.value}) at {spec.address}",
             f"  CPUs {node.cpu_milli / 1000:g}, memory {node.memory_mib / 1024:.1f} GiB, {gpus}",
             f"  Ray node {spec.ray_node_id}",
             f"  pool {node.pool or '-'}, labels "
             + (", ".join(f"{k}={v}" for k, v in sorted(node.labels.items())) or "-")]
    output.out.print(Text("\n".join(lines)))


def drain(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Node name."),
    json_out: bool = typer.Option(False, "--json", help="Print the node as JSON."),
) -> None:
    """Drain a node: no new work; its running work moves or finishes, then it takes none."""
    from neocloud.cli.context import client

    node = client(ctx).nodes.drain(name)
    if json_out:
        output.print_json(node)
        return
    output.out.print(Text(f"Draining {node.name}."))


def register(node_app: typer.Typer) -> None:
    """Add ``join``, ``drain`` and ``remove`` (the same as ``rm``) to ``node``."""
    from neocloud.cli.inventory import node_rm

    node_app.command("join")(join)
    node_app.command("drain")(drain)
    node_app.command("remove")(node_rm)

