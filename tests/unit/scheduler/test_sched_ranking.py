"""Kept rankings (policies.Ranking) choose exactly what a full scan of the index chooses."""

from __future__ import annotations

import random

import pytest
from sched_helpers import node  # noqa: E402

from neocloud.server.scheduler import Binding, ClusterIndex, ResourceRequest, make_policy
from neocloud.server.scheduler.types import NodeSnapshot

REQUESTS = [
    ResourceRequest(4000, 8192, gpu_milli=250),
    ResourceRequest(8000, 16384, gpu_milli=500, gpu_types=("A100",)),
    ResourceRequest(8000, 16384, gpu_count=1),
    ResourceRequest(16000, 32768, gpu_count=2, gpu_types=("T4",)),
    ResourceRequest(32000, 65536, gpu_count=4),
    ResourceRequest(2000, 4096),
    ResourceRequest(4000, 8192, gpu_count=1, node_selector={"zone": "b"}),
]


def fleet() -> list[NodeSnapshot]:
    out = []
    for i in range(12):
        kind = i % 3
        if kind == 0:
            out.append(node(f"a{i}", 8, "A100", labels={"zone": "ab"[i % 2]}))
        elif kind == 1:
            out.append(node(f"t{i}", 2, "T4", cpu=32_000, mem=128 * 1024))
        else:
            out.append(node(f"c{i}", 0, "", cpu=16_000, mem=64 * 1024, labels={"zone": "b"}))
    return out


@pytest.mark.parametrize("policy", ["first-fit", "best-fit", "fgd", "fgd-pack"])
def test_ranked_choice_matches_a_full_scan(policy: str) -> None:
    rng = random.Random(7)
    index = ClusterIndex(fleet())
    ranked = make_policy(policy)
    scan = make_policy(policy)
    held: list[Binding] = []
    for step in range(400):
        roll = rng.random()
        if roll < 0.25 and held:
            index.release(held.pop(rng.randrange(len(held))))
        elif roll < 0.28:
            victim = index.ids[rng.randrange(len(index))]
            index.set_status(victim, rng.choice(["ready", "ready", "cordoned"]))
        request = REQUESTS[rng.randrange(len(REQUESTS))]
        found = scan._select_scan(index, request)
        expected = (
            None
            if found is None
            else (found[0], scan.pick_slots(index.gpu_free[found[0]], request, found[1]))
        )
        got = ranked.select(index, request)
        assert got == expected, f"step {step}: {request.describe()}"
        if got is not None:
            held.append(index.bind(got[0], request, got[1]))


def test_rankings_reset_for_a_new_index() -> None:
    chooser = make_policy("fgd-pack")
    ask = ResourceRequest(4000, 8192, gpu_count=1)
    first = ClusterIndex([node("x", free=[0] * 7 + [1000])])
    assert chooser.select(first, ask) == (0, (7,))
    second = ClusterIndex([node("y", free=[0] * 8), node("z")])
    assert chooser.select(second, ask) == (1, (0,))
