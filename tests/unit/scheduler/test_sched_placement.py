"""Placement policies on hand-made inventories."""

from __future__ import annotations

import copy

import pytest
from sched_helpers import node  # noqa: E402

from neocloud.errors import ValidationFailed
from neocloud.server.scheduler import (
    POLICIES,
    Binding,
    ResourceRequest,
    Unschedulable,
    apply_binding,
    place,
    place_gang,
    release_binding,
)

ALL = sorted(p for p in POLICIES if p != "default")
PACKING = ["first-fit", "best-fit", "fgd", "fgd-pack"]


def one_gpu() -> ResourceRequest:
    return ResourceRequest(cpu_milli=4000, memory_mib=8192, gpu_count=1)


@pytest.mark.parametrize("policy", ALL + ["default"])
def test_every_policy_binds_only_where_there_is_room(policy: str) -> None:
    nodes = [node("full", free=[0] * 8), node("room", free=[0] * 6 + [1000, 1000])]
    result = place(nodes, ResourceRequest(8000, 16384, gpu_count=2), policy=policy)
    assert isinstance(result, Binding)
    assert result.node_id == "room"
    assert sorted(result.gpu_indices) == [6, 7]
    assert (result.gpu_milli, result.cpu_milli, result.memory_mib) == (1000, 8000, 16384)


@pytest.mark.parametrize("policy", ALL)
def test_every_policy_reports_when_nothing_fits(policy: str) -> None:
    nodes = [node("a", free=[1000, 1000, 0, 0, 0, 0, 0, 0]), node("b", free=[0] * 8)]
    result = place(nodes, ResourceRequest(1000, 1024, gpu_count=4), policy=policy)
    assert isinstance(result, Unschedulable)
    assert result.reason.startswith("no node has 4 free GPUs")
    assert "(best: a with 2)" in result.reason


@pytest.mark.parametrize("policy", PACKING)
def test_packing_policies_keep_the_empty_node_whole(policy: str) -> None:
    nodes = [node("empty"), node("busy", free=[0] * 7 + [1000])]
    result = place(nodes, one_gpu(), policy=policy)
    assert isinstance(result, Binding)
    assert result.node_id == ("empty" if policy == "first-fit" else "busy")


def test_first_fit_takes_inventory_order() -> None:
    nodes = [node("n1", free=[0] * 7 + [1000]), node("n2"), node("n3")]
    result = place(nodes, one_gpu(), policy="first-fit")
    assert isinstance(result, Binding) and result.node_id == "n1" and result.gpu_indices == (7,)


def test_random_policy_spreads_over_seeds() -> None:
    nodes = [node(f"n{i}") for i in range(6)]
    chosen = set()
    for seed in range(30):
        result = place(nodes, one_gpu(), policy="random", seed=seed)
        assert isinstance(result, Binding)
        chosen.add(result.node_id)
    assert len(chosen) >= 3


@pytest.mark.parametrize("policy", ["first-fit", "best-fit", "fgd", "fgd-pack"])
def test_fractions_share_one_gpu(policy: str) -> None:
    nodes = [node("a", gpus=2)]
    half = ResourceRequest(2000, 4096, gpu_milli=500)
    first = place(nodes, half, policy=policy)
    assert isinstance(first, Binding) and first.gpu_milli == 500
    nodes = apply_binding(nodes, first)
    second = place(nodes, half, policy=policy)
    assert isinstance(second, Binding)
    assert second.gpu_indices == first.gpu_indices
    nodes = apply_binding(nodes, second)
    assert sorted(g.free_milli for g in nodes[0].gpus) == [0, 1000]


@pytest.mark.parametrize("policy", ["best-fit", "fgd", "fgd-pack"])
def test_fraction_goes_to_the_partly_used_gpu(policy: str) -> None:
    nodes = [node("a", gpus=4, free=[1000, 400, 1000, 1000])]
    result = place(nodes, ResourceRequest(1000, 1024, gpu_milli=300), policy=policy)
    assert isinstance(result, Binding) and result.gpu_indices == (1,)


def test_fraction_needs_one_gpu_with_enough_free() -> None:
    nodes = [node("a", gpus=2, free=[400, 400])]
    result = place(nodes, ResourceRequest(1000, 1024, gpu_milli=500))
    assert isinstance(result, Unschedulable)
    assert "with 0.5 of its capacity free (best: a with 0.4)" in result.reason


@pytest.mark.parametrize("policy", ALL)
def test_gpu_type_constraint(policy: str) -> None:
    nodes = [node("t4", gpu_type="T4"), node("a100", gpu_type="A100", free=[0] * 7 + [1000])]
    ask = ResourceRequest(1000, 1024, gpu_count=1, gpu_types=("A100", "H100"))
    result = place(nodes, ask, policy=policy)
    assert isinstance(result, Binding) and result.node_id == "a100"
    nodes = apply_binding(nodes, result)
    again = place(nodes, ask, policy=policy)
    assert isinstance(again, Unschedulable)
    assert "of type A100|H100" in again.reason and "1 node(s) with another GPU type" in again.reason


@pytest.mark.parametrize("policy", ALL)
def test_node_selector_and_pool(policy: str) -> None:
    nodes = [node("plain"), node("zone-b", labels={"zone": "b"}), node("pooled", pool="spot")]
    by_label = place(nodes, ResourceRequest(1000, 1024, node_selector={"zone": "b"}), policy=policy)
    assert isinstance(by_label, Binding) and by_label.node_id == "zone-b"
    by_pool = place(
        nodes, ResourceRequest(1000, 1024, node_selector={"pool": "spot"}), policy=policy
    )
    assert isinstance(by_pool, Binding) and by_pool.node_id == "pooled"
    missing = place(nodes, ResourceRequest(1000, 1024, node_selector={"zone": "c"}), policy=policy)
    assert isinstance(missing, Unschedulable)
    assert "3 node(s) without the selected labels" in missing.reason


@pytest.mark.parametrize("policy", ALL)
def test_only_ready_nodes_take_work(policy: str) -> None:
    nodes = [
        node("c", status="cordoned"),
        node("d", status="draining"),
        node("x", status="not_ready"),
        node("r", free=[0] * 7 + [1000]),
    ]
    result = place(nodes, one_gpu(), policy=policy)
    assert isinstance(result, Binding) and result.node_id == "r"
    nodes = apply_binding(nodes, result)
    none = place(nodes, one_gpu(), policy=policy)
    assert isinstance(none, Unschedulable)
    for phrase in ("1 node(s) cordoned", "1 node(s) draining", "1 node(s) not ready"):
        assert phrase in none.reason


def test_cpu_and_memory_must_fit_beside_gpus() -> None:
    nodes = [node("small", cpu=8000), node("big", cpu=64_000, mem_free=1024)]
    ask = ResourceRequest(16_000, 4096, gpu_count=1)
    result = place(nodes, ask)
    assert isinstance(result, Unschedulable)
    assert result.reason.startswith("no node has 16 CPUs and 4 GiB of memory free beside the 1 GPU")
    assert "1 node(s) without enough free CPU" in result.reason
    assert "1 node(s) without enough free memory" in result.reason


def test_cpu_only_work_avoids_gpu_nodes_with_fgd_pack() -> None:
    nodes = [node("gpu"), node("cpu", gpus=0, gpu_type="")]
    result = place(nodes, ResourceRequest(8000, 8192))
    assert isinstance(result, Binding) and result.node_id == "cpu" and result.gpu_indices == ()


@pytest.mark.parametrize("policy", ALL)
def test_gang_is_all_or_nothing(policy: str) -> None:
    nodes = [node("a"), node("b")]
    before = copy.deepcopy(nodes)
    worker = ResourceRequest(8000, 8192, gpu_count=8)
    result = place_gang(nodes, [worker, worker, worker], policy=policy)
    assert isinstance(result, Unschedulable)
    assert "gang of 3 workers does not fit all at once" in result.reason
    assert nodes == before
    ok = place_gang(nodes, [worker, worker], policy=policy)
    assert isinstance(ok, list) and sorted(b.node_id for b in ok) == ["a", "b"]
    assert nodes == before


def test_gang_places_big_workers_first_and_keeps_request_order() -> None:
    nodes = [node("a", gpus=4), node("b", gpus=4, free=[1000, 1000, 0, 0])]
    small = ResourceRequest(1000, 1024, gpu_count=2)
    big = ResourceRequest(1000, 1024, gpu_count=4)
    result = place_gang(nodes, [small, big], policy="first-fit")
    assert isinstance(result, list)
    assert [b.node_id for b in result] == ["b", "a"]
    assert len(result[1].gpu_indices) == 4


def test_apply_and_release_round_trip() -> None:
    nodes = [node("a", gpus=2)]
    binding = Binding("a", (1,), 250, 2000, 1024)
    taken = apply_binding(nodes, binding)
    assert [g.free_milli for g in taken[0].gpus] == [1000, 750]
    assert taken[0].cpu_milli_free == 62_000 and nodes[0].cpu_milli_free == 64_000
    back = release_binding(taken, binding)
    assert back[0] == nodes[0]
    with pytest.raises(ValueError, match="cannot take this change"):
        release_binding(nodes, binding)
    with pytest.raises(ValueError, match="unknown node"):
        apply_binding(nodes, Binding("zz", (), 0, 1, 1))
    with pytest.raises(ValueError, match="no GPU index 5"):
        apply_binding(nodes, Binding("a", (5,), 1000, 1, 1))


def test_request_validation() -> None:
    with pytest.raises(ValidationFailed):
        ResourceRequest(1000, 1024, gpu_count=1, gpu_milli=500)
    with pytest.raises(ValidationFailed):
        ResourceRequest(1000, 1024, gpu_milli=1000)
    with pytest.raises(ValidationFailed):
        ResourceRequest(-1, 1024)
    ask = ResourceRequest(1000, 1024, gpu_types=["A100"], node_selector={"b": "2", "a": "1"})
    assert ask.gpu_types == ("A100",) and ask.selector == (("a", "1"), ("b", "2"))
    assert hash(ask) == hash(
        ResourceRequest(1000, 1024, gpu_types=("A100",), node_selector=[("a", "1"), ("b", "2")])
    )


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="choose one of: best-fit, default"):
        place([node("a")], one_gpu(), policy="nope")


def test_empty_inventory() -> None:
    result = place([], one_gpu())
    assert isinstance(result, Unschedulable) and result.reason == "no nodes are registered"
