"""Trace loading and replay drivers for the scheduler (fleet simulation, benchmarks)."""

from __future__ import annotations

from neocloud.simulate.fgd_protocol import (
    arrival_sequence,
    replay_fgd_protocol,
    simulate_fgd_protocol,
)
from neocloud.simulate.inventory import (
    PodRecord,
    load_nodes,
    load_nodes_yaml,
    load_openb_nodes,
    load_openb_pods,
    make_node,
    replicate_nodes,
)

__all__ = [
    "PodRecord",
    "arrival_sequence",
    "load_nodes",
    "load_nodes_yaml",
    "load_openb_nodes",
    "load_openb_pods",
    "make_node",
    "replay_fgd_protocol",
    "replicate_nodes",
    "simulate_fgd_protocol",
]
