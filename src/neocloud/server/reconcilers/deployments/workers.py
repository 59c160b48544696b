"""Several deployments reconciled at once, their placements still in the pass's order.

A pass visits the deployments by priority, then age. Most of a deployment's step is
round trips to the database and to the backend (deciding, starting, readiness, status),
which several worker threads overlap; placement is the one part whose order matters (the
first deployment in the pass gets the room first), so each deployment places only after
every one before it in the pass has placed or had nothing to place (:class:`Turns`).
Each deployment still runs under its own lock shared by every control-plane copy
(``reconcile_each``), and placements are still serialised by the placement lock. The pass
runs one priority after the other (``reconciler``): work of lower priority starts only
once every deployment of higher priority has placed, preempted and stopped what it had to
in that pass, as when the pass ran in one thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


class Turns:
    """Turns to place, in the order ``0, 1, 2, ...`` of the deployments of one pass."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._done: set[int] = set()
        self._next = 0

    def wait(self, k: int) -> None:
        """Block until every position before ``k`` is :meth:`done`."""
        with self._cond:
            while self._next < k:
                self._cond.wait()

    def done(self, k: int) -> None:
        """Position ``k`` has placed, or has nothing to place (idempotent)."""
        with self._cond:
            self._done.add(k)
            while self._next in self._done:
                self._done.discard(self._next)
                self._next += 1
            self._cond.notify_all()


class OrderedWorkers:
    """Runs a step over the deployments of a pass on ``workers`` threads; the step marks
    where it places with :meth:`placing`."""

    def __init__(self, workers: int):
        self.workers = workers
        self._mine = threading.local()

    def run(self, ids: Sequence[str], step: Callable[[str], None]) -> None:
        """``step(id)`` for each id, at most :attr:`workers` at once (in this thread
        when only one), placements in the order of ``ids``. ``step`` handles its own
        errors (``reconcile_each``); the pass returns when every step has."""
        if self.workers <= 1 or len(ids) <= 1:
            for dep_id in ids:
                step(dep_id)
            return
        turns = Turns()

        def one(k: int, dep_id: str) -> None:
            self._mine.turn = (turns, k)
            try:
                step(dep_id)
            finally:
                self._mine.turn = None
                turns.done(k)

        with ThreadPoolExecutor(max_workers=self.workers,
                                thread_name_prefix="neocloud-deployments") as pool:
            for fut in [pool.submit(one, k, dep_id) for k, dep_id in enumerate(ids)]:
                fut.result()

    @contextmanager
    def placing(self, needed: bool = True) -> Iterator[None]:
        """Hold this deployment's turn to place for the block (no wait outside
        :meth:`run`'s threads); the next deployment places once the block is over. With
        ``needed`` false (nothing to place) the turn is passed on at once, unawaited."""
        mine = getattr(self._mine, "turn", None)
        if mine is None:
            yield
            return
        turns, k = mine
        if not needed:
            turns.done(k)
            yield
            return
        turns.wait(k)
        try:
            yield
        finally:
            turns.done(k)
