"""fgd-pack's CPU reserve: keep enough free CPU beside free GPUs for the expected GPU work."""

from __future__ import annotations

import pytest
from sched_helpers import node  # noqa: E402

from neocloud.server.scheduler import (
    DEFAULT_WORKLOAD,
    Binding,
    ResourceRequest,
    WorkClass,
    Workload,
    make_policy,
    place,
)
from neocloud.server.scheduler.policies import FgdPack, cpu_per_gpu_milli


def test_cpu_per_gpu_is_the_popularity_weighted_ratio() -> None:
    wl = Workload.from_weights(
        [
            (WorkClass(4000, 500, 1), 1.0),
            (WorkClass(16000, 1000, 2), 1.0),
            (WorkClass(8000, 0, 0), 2.0),
        ]
    )
    # (4000 + 16000) / (500 + 2000): CPU-only classes do not count
    assert cpu_per_gpu_milli(wl.compiled()) == pytest.approx(8.0)
    cpu_only = Workload.from_weights([(WorkClass(8000, 0, 0), 1.0)])
    assert cpu_per_gpu_milli(cpu_only.compiled()) == 0.0


def test_cpu_deficit_counts_free_gpu_that_free_cpu_cannot_serve() -> None:
    wl = Workload.from_weights([(WorkClass(8000, 1000, 1), 1.0)])
    chooser = make_policy("fgd-pack", workload=wl)
    assert isinstance(chooser, FgdPack)
    assert chooser.cpu_deficit(cpu_free=32_000, gpu_free=2000) == 0.0
    assert chooser.cpu_deficit(cpu_free=8000, gpu_free=2000) == pytest.approx(1000.0)
    assert chooser.cpu_deficit(cpu_free=0, gpu_free=2000) == pytest.approx(2000.0)
    no_gpu_work = make_policy("fgd-pack", workload=Workload.from_weights([(WorkClass(1, 0, 0), 1)]))
    assert isinstance(no_gpu_work, FgdPack) and no_gpu_work.cpu_deficit(0, 8000) == 0.0


def test_cpu_work_goes_where_it_leaves_the_free_gpus_their_cpu() -> None:
    per_gpu = cpu_per_gpu_milli(DEFAULT_WORKLOAD.compiled())
    two_free = [0] * 6 + [1000, 1000]
    # "tight" has just the CPU its two free GPUs need; "roomy" has plenty.
    tight = node("tight", free=two_free, cpu_free=int(2000 * per_gpu) + 1)
    roomy = node("roomy", free=two_free, cpu_free=40_000)
    ask = ResourceRequest(500, 1024)
    # FGD sees no change of fragmentation on either node and takes the first one
    fgd = place([tight, roomy], ask, policy="fgd")
    assert isinstance(fgd, Binding) and fgd.node_id == "tight"
    ours = place([tight, roomy], ask, policy="fgd-pack")
    assert isinstance(ours, Binding) and ours.node_id == "roomy"


def test_cpu_work_still_prefers_nodes_whose_gpus_are_full() -> None:
    full = node("full", free=[0] * 8, cpu_free=4000)
    roomy = node("roomy", free=[0] * 6 + [1000, 1000], cpu_free=60_000)
    result = place([roomy, full], ResourceRequest(2000, 1024), policy="fgd-pack")
    assert isinstance(result, Binding) and result.node_id == "full"
