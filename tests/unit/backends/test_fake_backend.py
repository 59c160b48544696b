"""The fake backend's bookkeeping of simulated processes (it runs fleets of 50,000)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from neocloud.server.backends import FakeBackend
from neocloud.server.backends.base import WorkloadSpec, start_or_adopt


def spec(workload_id: str) -> WorkloadSpec:
    return WorkloadSpec(workload_id=workload_id, command=["true"], env={},
                        log_path=Path("/nonexistent") / f"{workload_id}.log")


def test_find_names_the_oldest_running_process_of_a_workload_and_none_once_stopped() -> None:
    be = FakeBackend()
    first = be.start(spec("a"))
    second = be.start(spec("a"))  # a second start of the same workload (no adoption)
    other = be.start(spec("b"))
    assert be.find("a") == first
    assert be.find("b") == other
    be.stop(first, grace_s=0)
    assert be.find("a") == second
    be.stop(second, grace_s=0)
    assert be.find("a") is None
    assert be.inspect(second).exit_code == 0
    assert be.find("b") == other


def test_a_crash_ends_every_process_of_the_workload_and_start_or_adopt_starts_anew() -> None:
    be = FakeBackend()
    h1, h2 = be.start(spec("a")), be.start(spec("a"))
    keep = be.start(spec("b"))
    be.crash("a", exit_code=3)
    assert be.find("a") is None
    assert be.inspect(h1).exit_code == 3 and be.inspect(h2).exit_code == 3
    assert be.inspect(keep).running
    again = start_or_adopt(be, spec("a"))
    assert again not in (h1, h2) and be.find("a") == again
    assert start_or_adopt(be, spec("a")) == again  # adopted, not started twice
    assert sorted(be.workload_ids()) == ["a", "b"]


def test_write_goes_to_the_running_process_and_fails_once_none_runs() -> None:
    be = FakeBackend()
    h = be.start(spec("a"))
    be.write("a", "hello\n")
    assert be.logs(h) == "hello\n"
    be.stop(h, grace_s=0)
    try:
        be.write("a", "late\n")
    except KeyError:
        pass
    else:
        raise AssertionError("write to a stopped workload must fail")


def test_many_processes_stay_indexed_after_stops() -> None:
    be = FakeBackend()
    handles = {f"w{i}": be.start(spec(f"w{i}")) for i in range(200)}
    for i in range(0, 200, 2):
        be.stop(handles[f"w{i}"], grace_s=0)
    assert all(be.find(f"w{i}") is None for i in range(0, 200, 2))
    assert all(be.find(f"w{i}") == handles[f"w{i}"] for i in range(1, 200, 2))
    assert be._by_workload.keys() == {f"w{i}" for i in range(1, 200, 2)}


def test_a_lost_nodes_processes_leave_the_index_too() -> None:
    """A node's processes ended together (a node lost) are no longer found: the index by
    workload id followed the running set (a test backend that edited the running set
    directly left ``find`` answering with the dead process, and a replica moved off the
    lost node was taken for its old, dead process)."""
    be = FakeBackend()
    on_a = be.start(replace(spec("w1"), node_name="a"))
    be.start(replace(spec("w2"), node_name="b"))
    assert be.end_node("a") == 1
    assert be.find("w1") is None and be.find("w2") is not None
    assert be.inspect(on_a).running is False
    moved = be.start(replace(spec("w1"), node_name="b"))
    assert be.find("w1") == moved
