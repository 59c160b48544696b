"""Deployments reconciled at once keep the placement order of the pass."""

from __future__ import annotations

import threading
import time

from neocloud.server.reconcilers.deployments.workers import OrderedWorkers, Turns


def test_turns_follow_the_positions_whatever_the_order_they_finish_in() -> None:
    turns = Turns()
    order: list[int] = []

    def place(k: int, delay: float) -> None:
        time.sleep(delay)
        turns.wait(k)
        order.append(k)
        turns.done(k)

    # the later positions are ready first
    threads = [threading.Thread(target=place, args=(k, 0.05 * (4 - k))) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_a_position_with_nothing_to_place_never_holds_up_the_others() -> None:
    turns = Turns()
    turns.done(1)  # passed its turn before 0 placed
    turns.done(0)
    done = threading.Event()

    def third() -> None:
        turns.wait(2)
        done.set()

    t = threading.Thread(target=third)
    t.start()
    t.join(2)
    assert done.is_set()


def test_workers_place_in_the_order_of_the_pass_and_overlap_the_rest() -> None:
    workers = OrderedWorkers(4)
    placed: list[str] = []
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    def step(dep_id: str) -> None:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        time.sleep(0.02 * (5 - int(dep_id[1:]) % 5))  # deciding: later ones are quicker
        with workers.placing(dep_id != "d3"):  # d3 has nothing to place
            if dep_id != "d3":
                placed.append(dep_id)
        time.sleep(0.05)  # starting, readiness: overlapped
        with lock:
            running["now"] -= 1

    ids = [f"d{i}" for i in range(8)]
    workers.run(ids, step)
    assert placed == [i for i in ids if i != "d3"]
    assert running["most"] > 1


def test_one_worker_runs_in_the_calling_thread() -> None:
    workers = OrderedWorkers(1)
    seen: list[str] = []
    workers.run(["a", "b"], lambda d: seen.append(threading.current_thread().name))
    assert seen == [threading.current_thread().name] * 2
