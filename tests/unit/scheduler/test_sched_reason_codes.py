"""The scheduler says why a request does not fit with a stable code beside its sentence,
and whether no registered node could ever take it (what ``deploy --dry-run`` reports)."""

from __future__ import annotations

import pytest
from sched_helpers import node  # noqa: E402

from neocloud.models.deployments import ReasonCode
from neocloud.server.scheduler import ResourceRequest, Unschedulable, place, place_gang


def _miss(nodes, request: ResourceRequest) -> Unschedulable:
    result = place(nodes, request)
    assert isinstance(result, Unschedulable), result
    return result


@pytest.mark.parametrize(("nodes", "request_", "code", "never"), [
    # only CPU nodes, or nodes of another GPU type: no GPU of the kind asked for
    ([node("cpu", gpus=0)], ResourceRequest(1000, 1024, gpu_count=1),
     ReasonCode.NO_MATCHING_GPU_TYPE, True),
    ([node("a", gpu_type="A100")], ResourceRequest(1000, 1024, gpu_count=1,
                                                   gpu_types=("H100",)),
     ReasonCode.NO_MATCHING_GPU_TYPE, True),
    # the right type, but no node has that many GPUs at all (the nearer miss wins)
    ([node("small", gpus=2), node("other", gpu_type="L4")],
     ResourceRequest(1000, 1024, gpu_count=4, gpu_types=("A100",)),
     ReasonCode.INSUFFICIENT_GPUS_PER_NODE, True),
    # a node could hold it, but its GPUs are taken now
    ([node("busy", gpus=2, free=[0, 0])], ResourceRequest(1000, 1024, gpu_count=1),
     ReasonCode.WAITING_FOR_CAPACITY, False),
    # every node is ruled out by its state alone: it waits for one to be back (was
    # "never fits", which deploy --dry-run printed as "can never fit")
    ([node("down", status="not_ready")], ResourceRequest(1000, 1024),
     ReasonCode.WAITING_FOR_CAPACITY, False),
    # found by a new user: the only H100 node cordoned beside CPU nodes was "can never
    # fit, NO_MATCHING_GPU_TYPE" until uncordoned, then "fits"
    ([node("gpu-7", gpu_type="H100", status="cordoned"), node("cpu", gpus=0)],
     ResourceRequest(1000, 1024, gpu_count=1, gpu_types=("H100",)),
     ReasonCode.WAITING_FOR_CAPACITY, False),
    # a cordoned node of another kind changes nothing: never, with the kind's code
    ([node("a", gpu_type="A100", status="cordoned"), node("cpu", gpus=0)],
     ResourceRequest(1000, 1024, gpu_count=1, gpu_types=("H100",)),
     ReasonCode.NO_MATCHING_GPU_TYPE, True),
    # no node at all: capacity may yet join
    ([], ResourceRequest(1000, 1024), ReasonCode.WAITING_FOR_CAPACITY, False),
])
def test_each_miss_carries_its_code(nodes, request_, code, never) -> None:
    miss = _miss(nodes, request_)
    assert miss.code is code and miss.never_fits is never
    assert miss.reason  # the sentence is still there for people


def test_a_gang_keeps_the_code_of_the_worker_that_did_not_fit() -> None:
    result = place_gang([node("small", gpus=2)],
                        [ResourceRequest(1000, 1024, gpu_count=4)] * 2)
    assert isinstance(result, Unschedulable)
    assert result.reason.startswith("gang of 2 workers does not fit")
    assert result.code is ReasonCode.INSUFFICIENT_GPUS_PER_NODE and result.never_fits



def test_a_gang_that_fits_in_part_names_how_many_are_placed_in_plain_words() -> None:
    """Read "has no room after 1 others are placed" for a gang of two."""
    result = place_gang([node("one", gpus=4)], [ResourceRequest(1000, 1024, gpu_count=4)] * 2)
    assert isinstance(result, Unschedulable)
    assert "worker 2 (" in result.reason and "after 1 other is placed" in result.reason, result
    three = place_gang([node("two", gpus=8)], [ResourceRequest(1000, 1024, gpu_count=4)] * 3)
    assert isinstance(three, Unschedulable) and "after 2 others are placed" in three.reason
