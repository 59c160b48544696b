"""A real multi-node Ray cluster on this machine, for the Ray leg of the backend tests.

A head and workers, each a separate ``ray start --block`` process tree on its own loopback
address (``127.0.0.2``, ``127.0.0.3``, ...: Ray replaces ``127.0.0.1`` with the machine's
routable address), with its own ports, temp folder and memory limits, started one after
another (two nodes starting at once race for the object-store socket). Nodes are stopped by
SIGTERM to the ``ray start`` process this module started, never by ``ray stop`` (which
stops every Ray process of the machine).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Ports one node takes, from its block's base: GCS, node manager, object manager, client
#: server, dashboard agent (listen, gRPC), runtime-env agent, metrics, then the workers'.
PORTS_PER_NODE = 60
WORKER_PORTS = 40
#: Object store and (logical) worker memory per node, bytes: without them every node claims
#: the whole machine's memory. neocloud's supervisors ask Ray for no memory.
OBJECT_STORE_BYTES = 100 * 1024 * 1024
WORKER_MEMORY_BYTES = 100 * 1024 * 1024
#: What every process of the test cluster (nodes and drivers) runs with: Ray turns token
#: authentication on for a new head when the machine's ``~/.ray/auth_token`` exists, but
#: not for a client, which then cannot connect ("InvalidAuthToken"); a loopback test
#: cluster does without it, whatever another Ray user of the machine left there.
TEST_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_block(size: int, *, low: int = 20000, tries: int = 50) -> int:
    """The first port of ``size`` consecutive ports free now, below the range the kernel
    hands out to outgoing connections (``ip_local_port_range``, often from 32768): a port
    in it can be taken by any client meanwhile (a head once failed so, "Address already in
    use" for its GCS port)."""
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        high = 32768
    if high - size <= low:
        high = 60000
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(low, high - size, 100)
        if all(_bindable(p) for p in range(base, base + size)):
            return base
    raise RuntimeError(f"no {size} free consecutive ports between {low} and {high}")


@dataclass
class RayNode:
    """One node: its address, the ``ray start --block`` process and its log."""

    ip: str
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int] = field(default_factory=dict)


def own_args(base_port: int, temp_dir: Path) -> list[str]:
    """The ports (from ``base_port`` on), temp folder and memory limits that keep one node
    of a one-machine cluster apart from the others."""
    p = base_port
    return [f"--temp-dir={temp_dir}",
            f"--node-manager-port={p + 1}", f"--object-manager-port={p + 2}",
            f"--dashboard-agent-listen-port={p + 4}", f"--dashboard-agent-grpc-port={p + 5}",
            f"--runtime-env-agent-port={p + 6}", f"--metrics-export-port={p + 7}",
            f"--min-worker-port={p + 10}", f"--max-worker-port={p + 10 + WORKER_PORTS}",
            f"--object-store-memory={OBJECT_STORE_BYTES}", f"--memory={WORKER_MEMORY_BYTES}",
            "--num-cpus=2"]


def node_args(*, ip: str, base_port: int, temp_dir: Path, head: bool, address: str | None,
              num_gpus: int, labels: dict[str, str]) -> list[str]:
    """The ``ray start`` arguments of one node whose ports start at ``base_port``."""
    p = base_port
    args = ["--block", f"--node-ip-address={ip}", *own_args(base_port, temp_dir),
            f"--num-gpus={num_gpus}", "--disable-usage-stats"]
    if labels:
        args.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
    if head:
        args += ["--head", f"--port={p}", f"--ray-client-server-port={p + 3}",
                 "--include-dashboard=false"]
    else:
        assert address is not None
        args.append(f"--address={address}")
    return args


class LocalRayCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (SIGTERM to the PIDs it started)."""

    def __init__(self, root: Path, *, workers: int = 2, worker_gpus: int = 2,
                 python: str = sys.executable):
        self.root = root
        self.workers = workers
        self.worker_gpus = worker_gpus
        self.ray = str(Path(python).with_name("ray"))
        self.base = free_block(PORTS_PER_NODE * 8)
        self.nodes: list[RayNode] = []
        self.address = f"127.0.0.2:{self.base}"
        self.started_s = 0.0
        """Seconds :meth:`start` took (head and workers, one after another)."""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEOCLOUD_")}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env.update(TEST_RAY_ENV)
        return env

    def _start_node(self, i: int, name: str, *, num_gpus: int | None = None) -> RayNode:
        ip, base, temp = self.slot(i)
        log = self.root / f"{name}.log"
        args = node_args(ip=ip, base_port=base, temp_dir=temp,
                         head=i == 0, address=None if i == 0 else self.address,
                         num_gpus=(0 if i == 0 else self.worker_gpus) if num_gpus is None
                         else num_gpus,
                         labels={"neocloud.io/node": name})
        with open(log, "wb") as out:
            proc = subprocess.Popen([self.ray, "start", *args], stdout=out,
                                    stderr=subprocess.STDOUT, env=self._env(),
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node = RayNode(ip=ip, name=name, proc=proc, log=log)
        self.nodes.append(node)
        return node

    def _wait_alive(self, count: int, timeout_s: float = 90.0) -> None:
        """Until ``count`` nodes are alive in the cluster (asked through the GCS)."""
        code = ("import ray,sys; ray.init(address=sys.argv[1], _node_ip_address='127.0.0.2',"
                " log_to_driver=False, configure_logging=False, logging_level='ERROR');"
                "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for n in self.nodes:
                if n.proc.poll() is not None:
                    raise RuntimeError(f"ray node {n.name} exited:\n{n.log.read_text()[-3000:]}")
            try:
                out = subprocess.run([str(Path(self.ray).with_name("python")), "-c", code,
                                      self.address], capture_output=True, text=True,
                                     env=self._env(), timeout=60)
            except subprocess.TimeoutExpired:
                continue  # a node that exited meanwhile is reported above
            if out.returncode == 0 and out.stdout.strip().isdigit() \
                    and int(out.stdout.strip()) >= count:
                return
            time.sleep(1.0)
        raise RuntimeError(f"{count} ray nodes did not come up in {timeout_s} s")

    def slot(self, i: int) -> tuple[str, int, Path]:
        """Address, first port and temp folder of node slot ``i`` (0 is the head)."""
        temp = self.root / f"n{i}"  # Ray's socket paths must stay short (108 bytes)
        temp.mkdir(parents=True, exist_ok=True)
        return f"127.0.0.{2 + i}", self.base + i * PORTS_PER_NODE, temp

    def alive_count(self) -> int:
        import ray

        return sum(1 for n in ray.nodes() if n["Alive"])

    def add_node(self, name: str, *, num_gpus: int = 0) -> RayNode:
        """One more worker node (``127.0.0.<2 + n>``), once it is alive."""
        i = len(self.nodes)
        node = self._start_node(i, name, num_gpus=num_gpus)
        self._wait_alive(len(self.nodes))
        return node

    def start(self) -> LocalRayCluster:
        t0 = time.monotonic()
        self._start_node(0, "head")
        self._wait_alive(1)
        for w in range(1, self.workers + 1):
            self._start_node(w, f"worker{w}")
            self._wait_alive(1 + w)
        self.started_s = time.monotonic() - t0
        return self

    def stop_node(self, node: RayNode, timeout_s: float = 30.0) -> None:
        """SIGTERM to the node's ``ray start --block`` process; SIGKILL to its process group
        if it has not exited in ``timeout_s``."""
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(10)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.stop_node(node)
