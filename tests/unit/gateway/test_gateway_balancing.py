"""Balancing policies and replica cooldown."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from neocloud.gateway.balancing import (
    LeastOutstanding,
    PowerOfTwoChoices,
    RandomChoice,
    ReplicaLoad,
    RoundRobin,
    make_policy,
)
from neocloud.gateway.types import Upstream

UPS = tuple(Upstream(f"r{i}", f"http://127.0.0.1:{9000 + i}") for i in range(4))


def test_p2c_with_two_candidates_always_takes_the_less_loaded() -> None:
    load = ReplicaLoad()
    for _ in range(5):
        load.begin("r0")
    policy = PowerOfTwoChoices(random.Random(1))
    assert {policy.choose(UPS[:2], load).replica_id for _ in range(50)} == {"r1"}


def test_p2c_never_picks_the_most_loaded_of_many() -> None:
    load = ReplicaLoad()
    for i, u in enumerate(UPS):
        for _ in range(i):
            load.begin(u.replica_id)
    policy = PowerOfTwoChoices(random.Random(2))
    picks = Counter(policy.choose(UPS, load).replica_id for _ in range(2000))
    assert "r3" not in picks  # r3 loses every pair it is drawn in
    assert picks["r0"] > picks["r1"] > picks["r2"] > 0


def test_p2c_keeps_load_even_when_requests_pile_up() -> None:
    load = ReplicaLoad()
    policy = PowerOfTwoChoices(random.Random(3))
    for _ in range(400):
        load.begin(policy.choose(UPS, load).replica_id)
    counts = [load.outstanding[u.replica_id] for u in UPS]
    assert max(counts) - min(counts) <= 2  # random choice would spread ~±20 here


def test_outstanding_counts_go_back_to_zero() -> None:
    load = ReplicaLoad()
    load.begin("a")
    load.begin("a")
    load.end("a")
    assert load.outstanding == {"a": 1}
    load.end("a")
    load.end("a")  # an extra end never goes negative
    assert load.outstanding == {}


def test_least_round_robin_and_random() -> None:
    load = ReplicaLoad()
    load.begin("r0")
    load.begin("r1")
    assert LeastOutstanding(random.Random(0)).choose(UPS[:3], load).replica_id == "r2"
    rr = RoundRobin()
    assert [rr.choose(UPS, load).replica_id for _ in range(5)] == ["r0", "r1", "r2", "r3", "r0"]
    rand = RandomChoice(random.Random(0))
    assert {rand.choose(UPS, load) for _ in range(100)} == set(UPS)


def test_candidates_skip_tried_and_cooling_replicas() -> None:
    load = ReplicaLoad(cooldown_s=10)
    assert list(load.candidates(UPS, {"r0"})) == list(UPS[1:])
    load.mark_failed("r1", now=0.0)  # monotonic time 0: long past, so no longer cooling
    assert list(load.candidates(UPS, None)) == list(UPS)
    load.mark_failed("r1")
    assert [u.replica_id for u in load.candidates(UPS, None)] == ["r0", "r2", "r3"]
    load.mark_ok("r1")
    assert list(load.candidates(UPS, None)) == list(UPS)


def test_cooling_replicas_are_used_when_nothing_else_is_left() -> None:
    load = ReplicaLoad(cooldown_s=10)
    for u in UPS:
        load.mark_failed(u.replica_id)
    assert list(load.candidates(UPS, {"r0"})) == list(UPS[1:])


def test_make_policy() -> None:
    assert isinstance(make_policy("p2c"), PowerOfTwoChoices)
    assert isinstance(make_policy("least"), LeastOutstanding)
    with pytest.raises(ValueError, match="unknown balancer"):
        make_policy("fastest")
