"""Load node lists and pod lists: the openb CSV formats and a YAML node list.

openb is Alibaba's ``cluster-trace-gpu-v2023`` (Weng et al., ATC'23):

* node list columns ``sn,cpu_milli,memory_mib,gpu,model`` (GPU count and model);
* pod list columns ``name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,
  creation_time,deletion_time,scheduled_time``; ``gpu_milli`` is the share of each GPU
  (a fraction when ``num_gpu`` is 1), ``gpu_spec`` lists allowed models separated by ``|``;
  times are seconds from trace start. The ``multigpu`` variants carry only the first five
  columns.

The YAML node list is a list (or ``{"nodes": [...]}``) of mappings with keys ``id``,
``cpu_milli``, ``memory_mib``, ``gpus`` (count), ``gpu_type``, optional ``gpu_memory_mib``,
``labels``, ``pool``, ``status`` and ``count`` (that many copies, ids suffixed ``-0``, ``-1``...).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from neocloud.server.scheduler.types import MILLI, GpuSlot, NodeSnapshot, ResourceRequest

GPU_MEMORY_MIB = {
    "T4": 16 * 1024,
    "P100": 16 * 1024,
    "V100M16": 16 * 1024,
    "V100M32": 32 * 1024,
    "A10": 24 * 1024,
    "A100": 80 * 1024,
    "H100": 80 * 1024,
}
"""Nominal GPU memory by model (MiB), from the vendors' data sheets; unknown models get 0."""


def make_node(
    node_id: str,
    *,
    cpu_milli: int,
    memory_mib: int,
    gpus: int = 0,
    gpu_type: str = "",
    gpu_memory_mib: int | None = None,
    labels: dict[str, str] | None = None,
    pool: str | None = None,
    status: str = "ready",
) -> NodeSnapshot:
    """An empty node (everything free) with ``gpus`` GPUs of one model."""
    mem = GPU_MEMORY_MIB.get(gpu_type, 0) if gpu_memory_mib is None else gpu_memory_mib
    return NodeSnapshot(
        id=node_id,
        cpu_milli_total=cpu_milli,
        cpu_milli_free=cpu_milli,
        memory_mib_total=memory_mib,
        memory_mib_free=memory_mib,
        gpus=[
            GpuSlot(index=i, type=gpu_type, memory_mib=mem, free_milli=MILLI) for i in range(gpus)
        ],
        labels=dict(labels or {}),
        pool=pool,
        status=status,
    )


def load_openb_nodes(path: Path) -> list[NodeSnapshot]:
    """Nodes of an openb node list CSV, all empty and ready.

    Raises:
        ValueError: when a required column is missing.
    """
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    _require(rows, ("sn", "cpu_milli", "memory_mib", "gpu", "model"), path)
    out = []
    for row in rows:
        gpus = int(row["gpu"] or 0)
        model = (row["model"] or "").strip()
        if model.lower() == "nan":
            model = ""
        out.append(
            make_node(
                row["sn"],
                cpu_milli=int(row["cpu_milli"]),
                memory_mib=int(row["memory_mib"]),
                gpus=gpus,
                gpu_type=model if gpus else "",
            )
        )
    return out


@dataclass(frozen=True)
class PodRecord:
    """One pod of an openb pod list.

    Attributes:
        name: pod name.
        request: what it asks for.
        qos: QoS class ("LS", "BE", "Burstable", "Guaranteed"; "" when absent).
        phase: final phase in the trace ("" when absent).
        creation_time / deletion_time / scheduled_time: seconds from trace start, or None.
    """

    name: str
    request: ResourceRequest
    qos: str = ""
    phase: str = ""
    creation_time: float | None = None
    deletion_time: float | None = None
    scheduled_time: float | None = None


def openb_request(
    num_gpu: int, gpu_milli: int, cpu_milli: int, memory_mib: int, spec: str
) -> ResourceRequest:
    """The request of one openb pod row (a fraction when one GPU is asked with < 1000 milli)."""
    types = tuple(t for t in (spec or "").split("|") if t and t.lower() != "nan")
    if num_gpu == 1 and 0 < gpu_milli < MILLI:
        return ResourceRequest(cpu_milli, memory_mib, gpu_milli=gpu_milli, gpu_types=types)
    return ResourceRequest(
        cpu_milli, memory_mib, gpu_count=num_gpu, gpu_types=types if num_gpu else ()
    )


def _time(value: str | None) -> float | None:
    if value is None or value.strip() == "" or value.strip().lower() == "nan":
        return None
    return float(value)


def load_openb_pods(path: Path) -> list[PodRecord]:
    """Pods of an openb pod list CSV, in file order.

    Raises:
        ValueError: when a required column is missing.
    """
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    _require(rows, ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"), path)
    return [
        PodRecord(
            name=row["name"],
            request=openb_request(
                int(row["num_gpu"]),
                int(row["gpu_milli"]),
                int(row["cpu_milli"]),
                int(row["memory_mib"]),
                row.get("gpu_spec") or "",
            ),
            qos=row.get("qos") or "",
            phase=row.get("pod_phase") or "",
            creation_time=_time(row.get("creation_time")),
            deletion_time=_time(row.get("deletion_time")),
            scheduled_time=_time(row.get("scheduled_time")),
        )
        for row in rows
    ]


def load_nodes_yaml(path: Path) -> list[NodeSnapshot]:
    """Nodes of a YAML node list (format in the module docstring), all empty.

    Raises:
        ValueError: on a malformed file (not a list, or an entry without ``id``/``cpu_milli``/
            ``memory_mib``).
    """
    data = yaml.safe_load(Path(path).read_text())
    if isinstance(data, dict):
        data = data.get("nodes")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of nodes (or a mapping with 'nodes')")
    out: list[NodeSnapshot] = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not {"id", "cpu_milli", "memory_mib"} <= entry.keys():
            raise ValueError(f"{path}: node #{i} needs id, cpu_milli and memory_mib")
        count = int(entry.get("count", 1))
        for c in range(count):
            node_id = str(entry["id"]) if count == 1 else f"{entry['id']}-{c}"
            out.append(
                make_node(
                    node_id,
                    cpu_milli=int(entry["cpu_milli"]),
                    memory_mib=int(entry["memory_mib"]),
                    gpus=int(entry.get("gpus", 0)),
                    gpu_type=str(entry.get("gpu_type", "")),
                    gpu_memory_mib=entry.get("gpu_memory_mib"),
                    labels={str(k): str(v) for k, v in (entry.get("labels") or {}).items()},
                    pool=entry.get("pool"),
                    status=str(entry.get("status", "ready")),
                )
            )
    return out


def load_nodes(path: Path) -> list[NodeSnapshot]:
    """Nodes from an openb CSV (``.csv``) or a YAML node list (``.yaml``/``.yml``)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml"):
        return load_nodes_yaml(path)
    return load_openb_nodes(path)


def replicate_nodes(nodes: Sequence[NodeSnapshot], copies: int) -> list[NodeSnapshot]:
    """``copies`` copies of a fleet (ids suffixed ``~k`` from the second copy on)."""
    out: list[NodeSnapshot] = []
    for k in range(copies):
        for n in nodes:
            out.append(
                NodeSnapshot(
                    id=n.id if k == 0 else f"{n.id}~{k}",
                    cpu_milli_total=n.cpu_milli_total,
                    cpu_milli_free=n.cpu_milli_free,
                    memory_mib_total=n.memory_mib_total,
                    memory_mib_free=n.memory_mib_free,
                    gpus=[GpuSlot(g.index, g.type, g.memory_mib, g.free_milli) for g in n.gpus],
                    labels=dict(n.labels),
                    pool=n.pool,
                    status=n.status,
                )
            )
    return out


def _require(rows: Iterable[dict[str, str]], columns: Sequence[str], path: Path) -> None:
    rows = list(rows)
    if not rows:
        return
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
