"""Discover this machine as a node: CPU cores, memory and GPUs (through NVML when present)."""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import psutil

log = logging.getLogger(__name__)


@dataclass
class MachineInfo:
    """What this machine offers. CPU in millicores, memory in MiB."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: list[dict[str, Any]] = field(default_factory=list)
    """``[{"index": i, "type": "H100", "memory_mib": m}]``; empty without GPUs or NVML."""


def node_name(hostname: str | None = None) -> str:
    """A valid node name (DNS label) from the host name."""
    raw = (hostname or socket.gethostname() or "local").lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:63] or "local"
    if not name[0].isalpha():
        name = f"n-{name}"[:63]
    return name.rstrip("-")


def gpu_type_from_name(name: str) -> str:
    """Short GPU type from an NVML product name: ``NVIDIA H100 80GB HBM3`` -> ``H100``."""
    skip = {"NVIDIA", "TESLA", "GEFORCE", "RTX"}
    words = [w for w in re.split(r"[\s_]+", name) if w and w.upper() not in skip]
    for w in words:
        if re.match(r"^[A-Z]+\d+", w.upper()):
            return w.upper()
    return words[0].upper() if words else "GPU"


def discover_gpus() -> list[dict[str, Any]]:
    """GPUs visible through NVML (``nvidia-ml-py``); an empty list when NVML is absent.

    No GPU is a normal case, never an error.
    """
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        return []
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.info("no NVIDIA GPUs found (%s)", e)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode()
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append({"index": i, "type": gpu_type_from_name(name),
                         "memory_mib": int(mem.total // 2**20)})
    finally:
        pynvml.nvmlShutdown()
    return one_type(gpus)


def one_type(gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The GPUs of the most common type only: a node holds one GPU type (as a node pool
    does); the others are left out with a warning."""
    counts: dict[str, int] = {}
    for g in gpus:
        counts[g["type"]] = counts.get(g["type"], 0) + 1
    if len(counts) <= 1:
        return gpus
    keep = max(counts, key=lambda t: (counts[t], t))
    log.warning("this machine mixes GPU types %s; registering the %s GPUs only",
                sorted(counts), keep)
    return [g for g in gpus if g["type"] == keep]


def discover_machine(*, with_gpus: bool = True) -> MachineInfo:
    """This machine: ``os.cpu_count()`` cores, total memory, NVML GPUs."""
    return MachineInfo(
        name=node_name(),
        cpu_milli=(os.cpu_count() or 1) * 1000,
        memory_mib=int(psutil.virtual_memory().total // 2**20),
        gpus=discover_gpus() if with_gpus else [],
    )
