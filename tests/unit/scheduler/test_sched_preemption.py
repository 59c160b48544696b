"""Victim selection: order, minimality, and the never-preempt rules."""

from __future__ import annotations

import pytest
from sched_helpers import node  # noqa: E402

from neocloud.server.scheduler import (
    Binding,
    ClusterIndex,
    NodeSnapshot,
    ResourceRequest,
    RunningWork,
    Unschedulable,
    apply_binding,
    release_binding,
    select_victims,
)


def run(nodes: list[NodeSnapshot], *works: RunningWork) -> list[NodeSnapshot]:
    for w in works:
        for b in w.bindings:
            nodes = apply_binding(nodes, b)
    return nodes


def work(
    wid: str, prio: int, node_id: str, gpus: tuple[int, ...], *, preemptible: bool = True
) -> RunningWork:
    return RunningWork(wid, prio, preemptible, (Binding(node_id, gpus, 1000, 1000, 1024),))


FOUR = ResourceRequest(1000, 1024, gpu_count=4)


def test_nothing_to_preempt_when_it_fits() -> None:
    assert select_victims([node("a", gpus=4)], [], FOUR, priority=5) == []


def test_lowest_priority_and_fewest_victims() -> None:
    low_a = work("low-a", 1, "a", (0, 1))
    low_b = work("low-b", 1, "a", (2, 3))
    mid = work("mid", 3, "b", (0, 1, 2, 3))
    nodes = run([node("a", gpus=4), node("b", gpus=4)], low_a, low_b, mid)
    # node b frees 4 GPUs with one victim, node a needs two: fewer victims win.
    assert select_victims(nodes, [low_a, low_b, mid], FOUR, priority=5) == ["mid"]
    # with priority 3 the mid-priority work is not eligible: both low ones go.
    assert sorted(select_victims(nodes, [low_a, low_b, mid], FOUR, priority=3)) == [
        "low-a",
        "low-b",
    ]


def test_equal_size_prefers_lower_priority() -> None:
    p1 = work("p1", 1, "a", (0, 1, 2, 3))
    p2 = work("p2", 2, "b", (0, 1, 2, 3))
    nodes = run([node("a", gpus=4), node("b", gpus=4)], p1, p2)
    assert select_victims(nodes, [p2, p1], FOUR, priority=9) == ["p1"]


def test_never_preempts_protected_or_higher_priority_work() -> None:
    keep = work("keep", 0, "a", (0, 1, 2, 3), preemptible=False)
    peer = work("peer", 5, "b", (0, 1, 2, 3))
    above = work("above", 7, "c", (0, 1, 2, 3))
    nodes = run([node("a", gpus=4), node("b", gpus=4), node("c", gpus=4)], keep, peer, above)
    result = select_victims(nodes, [keep, peer, above], FOUR, priority=5)
    assert isinstance(result, Unschedulable)
    assert (
        "no room even after preempting all 0 preemptible workload(s) with priority below 5"
        == result.reason
    )


def test_gang_victims_are_pruned_to_what_is_needed() -> None:
    works = [
        work(f"w{i}", i, "a" if i < 2 else "b", (0, 1) if i % 2 == 0 else (2, 3)) for i in range(4)
    ]
    nodes = run([node("a", gpus=4), node("b", gpus=4)], *works)
    gang = [ResourceRequest(1000, 1024, gpu_count=2)] * 2
    victims = select_victims(nodes, works, gang, priority=10)
    assert isinstance(victims, list) and sorted(victims) == ["w0", "w1"]
    whole = select_victims(nodes, works, [FOUR, FOUR], priority=10)
    assert isinstance(whole, list) and sorted(whole) == ["w0", "w1", "w2", "w3"]
    assert isinstance(select_victims(nodes, works, [FOUR, FOUR], priority=3), Unschedulable)


def test_a_node_holding_more_than_it_has_is_released_into_without_error() -> None:
    # Rejoined with 1000 millicores and 4 of its 8 GPUs while holding 8000 and GPUs 0..7:
    # releasing one job leaves it short still; releasing GPUs it no longer lists frees
    # nothing there. Found by the API fuzzer (the job reconciler raised on every pass).
    short = node("a", gpus=4, free=[0] * 4, cpu=1000, cpu_free=-7000, mem_free=254 * 1024)
    low = RunningWork("low", 0, True, (Binding("a", (4, 5, 6, 7), 1000, 4000, 1024),))
    kept = RunningWork("kept", 0, False, (Binding("a", (0, 1, 2, 3), 1000, 4000, 1024),))
    released = release_binding([short], low.bindings[0])[0]
    assert released.cpu_milli_free == -3000 and [g.free_milli for g in released.gpus] == [0] * 4
    result = select_victims([short], [low, kept], FOUR, priority=5)
    assert isinstance(result, Unschedulable)
    # No booking may take what is not there, nor a release free beyond capacity.
    with pytest.raises(ValueError, match="cannot take this change of CPU or memory"):
        apply_binding([released], Binding("a", (), 0, 500, 0))
    with pytest.raises(ValueError, match="has no GPU index 4"):
        apply_binding([node("a", gpus=4)], Binding("a", (4,), 1000, 0, 0))
    with pytest.raises(ValueError, match="cannot take this change of CPU or memory"):
        release_binding([node("a", gpus=0)], Binding("a", (), 0, 500, 0))


def test_victims_on_gpus_a_node_no_longer_lists_free_only_what_it_has() -> None:
    # Rejoined with GPUs 0..3 of 8 while "low" holds 0..7; a one-GPU ask preempts it
    # (GPUs 0..3 come free). The per-node search once freed GPU 4 there and raised
    # "ValueError: 4 is not in list" on every reconciler pass.
    short = node("a", gpus=4, free=[0] * 4, cpu_free=60_000, mem_free=255 * 1024)
    low = RunningWork("low", 0, True, (Binding("a", tuple(range(8)), 1000, 4000, 1024),))
    assert select_victims([short], [low], ResourceRequest(1000, 1024, gpu_count=1),
                          priority=5) == ["low"]
    index = ClusterIndex([short])
    index.release(low.bindings[0])
    assert index.gpu_free[0] == [1000] * 4 and index.cpu_free[0] == 64_000
