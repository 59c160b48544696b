"""Dynamic batching: many concurrent calls with one item each become one call with a list.

Each caller gets its own future. A background task takes items from the queue and calls
the batch function with up to ``max_batch_size`` of them when either

- the batch is full ("batch full" event),
- the first queued item has waited ``max_wait_s`` (so the wait shrinks for items that
  arrive later: they all share the first item's deadline), or
- every request in flight on the replica is already queued or running in a batch, so
  waiting longer cannot fill the batch (this removes the wait at low load).

Items whose callers went away are skipped; items older than their deadline fail with
:class:`~neocloud.errors.Timeout` (HTTP 504) without being run. The batch function must
return one output per input (else every item of the batch fails with a clear error); an
output that is an ``Exception`` instance fails only its own item. When the whole call
raises for a batch of several items, each item is run again alone, so one bad item fails
only its own request.

Sync batch functions run in a dedicated one-thread executor (one model call at a time, off
the event loop); async ones are awaited on the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from neocloud.errors import NeocloudError, Timeout, Unavailable

log = logging.getLogger("neocloud.serving")

TRACKER_ATTR = "_neocloud_load"


class LoadTracker:
    """Counts requests in flight on a replica and, of those, the ones parked on a batch.

    ``active`` is maintained by the HTTP layer; ``parked`` by :meth:`Batcher.submit`.
    When ``active <= parked`` nobody else is about to join a batch.
    """

    __slots__ = ("active", "parked")

    def __init__(self) -> None:
        self.active = 0
        self.parked = 0


class BatchObserver(Protocol):
    def batch(self, size: int, seconds: float) -> None:
        """A batch of ``size`` items ran for ``seconds``."""

    def queue_wait(self, seconds: float) -> None:
        """One item waited ``seconds`` in the queue before its batch started."""


@dataclass(slots=True)
class _Item:
    value: Any
    future: asyncio.Future[Any]
    enqueued: float
    deadline: float | None


@dataclass
class Batcher:
    """Collects single calls into batch calls of ``fn``.

    Args:
        fn: ``fn(list_of_items) -> sequence of outputs`` (sync or async), one output per item.
        max_batch_size: most items per call.
        max_wait_s: longest wait (seconds) of the first queued item for the batch to fill.
        name: label for logs and metrics.
        owner: object whose ``_neocloud_load`` attribute holds the replica's
            :class:`LoadTracker` (optional; without it the full ``max_wait_s`` applies).
        observer: receives batch sizes, durations and queue waits (optional).
    """

    fn: Callable[[list[Any]], Any]
    max_batch_size: int = 32
    max_wait_s: float = 0.01
    name: str = "batch"
    owner: Any = None
    observer: BatchObserver | None = None
    _queue: deque[_Item] = field(default_factory=deque, init=False)
    _wake: asyncio.Event | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _executor: ThreadPoolExecutor | None = field(default=None, init=False)
    _closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._is_async = inspect.iscoroutinefunction(self.fn)

    # ------------------------------------------------------------------ callers
    def _enqueue(self, values: Sequence[Any], timeout_s: float | None) -> list[asyncio.Future[Any]]:
        if self._closed:
            raise Unavailable(f"{self.name}: shutting down")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name=f"batcher:{self.name}")
        now = time.monotonic()
        deadline = now + timeout_s if timeout_s else None
        futures: list[asyncio.Future[Any]] = []
        for value in values:
            fut: asyncio.Future[Any] = loop.create_future()
            self._queue.append(_Item(value, fut, now, deadline))
            futures.append(fut)
        assert self._wake is not None
        self._wake.set()
        return futures

    async def submit(self, value: Any, *, timeout_s: float | None = None) -> Any:
        """Queue one item and wait for its output.

        Raises:
            Timeout: the item was still queued ``timeout_s`` seconds after submission.
            Unavailable: the batcher was closed (replica shutting down).
            Exception: whatever the batch function raised for this item.
        """
        (fut,) = self._enqueue((value,), timeout_s)
        tracker: LoadTracker | None = getattr(self.owner, TRACKER_ATTR, None)
        if tracker is None:
            return await fut
        tracker.parked += 1
        try:
            return await fut
        finally:
            tracker.parked -= 1

    async def submit_many(self, values: Sequence[Any], *, timeout_s: float | None = None
                          ) -> list[Any]:
        """Queue several items of one request (they may share batches with others) and
        wait for all outputs, in order. If one item fails, the others are cancelled and
        its error is raised (same errors as :meth:`submit`)."""
        futures = self._enqueue(values, timeout_s)
        tracker: LoadTracker | None = getattr(self.owner, TRACKER_ATTR, None)
        if tracker is not None:
            tracker.parked += 1
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            if tracker is not None:
                tracker.parked -= 1

    __call__ = submit

    async def close(self) -> None:
        """Stop the loop; queued items fail with :class:`Unavailable`."""
        self._closed = True
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable(f"{self.name}: shutting down"))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ loop
    def _nobody_coming(self) -> bool:
        tracker: LoadTracker | None = getattr(self.owner, TRACKER_ATTR, None)
        return tracker is not None and tracker.active <= tracker.parked

    def _live_count(self) -> int:
        return sum(1 for it in self._queue if not it.future.done())

    async def _wait_wake(self, seconds: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            fill_deadline = self._queue[0].enqueued + self.max_wait_s
            while True:
                live = self._live_count()
                if live == 0 or live >= self.max_batch_size or self._nobody_coming():
                    break
                left = fill_deadline - time.monotonic()
                if left <= 0:
                    break
                await self._wait_wake(left)
            batch = self._take()
            if batch:
                await self._execute(batch)

    def _take(self) -> list[_Item]:
        now = time.monotonic()
        batch: list[_Item] = []
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done():  # caller went away (cancelled) or already failed
                continue
            if item.deadline is not None and now > item.deadline:
                item.future.set_exception(
                    Timeout(f"{self.name}: request waited longer than its timeout in the queue")
                )
                continue
            if self.observer is not None:
                self.observer.queue_wait(now - item.enqueued)
            batch.append(item)
        return batch

    async def _call(self, values: list[Any]) -> Any:
        if self._is_async:
            return await self.fn(values)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{self.name}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.fn, values)

    async def _execute(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        try:
            outputs = await self._call([it.value for it in batch])
        except asyncio.CancelledError:
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(Unavailable(f"{self.name}: shutting down"))
            raise
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
            else:
                log.warning("%s: batch of %d failed (%r); running items alone", self.name,
                            len(batch), exc)
                for it in batch:
                    if not it.future.done():
                        await self._execute([it])
            return
        finally:
            if self.observer is not None:
                self.observer.batch(len(batch), time.monotonic() - started)
        _deliver(self.name, batch, outputs)


def _settle(item: _Item, result: Any) -> None:
    if item.future.done():
        return
    if isinstance(result, BaseException):
        item.future.set_exception(result)
    else:
        item.future.set_result(result)


def _deliver(name: str, batch: list[_Item], outputs: Any) -> None:
    try:
        n = len(outputs)
    except TypeError:
        n = -1
    if n != len(batch):
        got = f"{n} outputs" if n >= 0 else f"a {type(outputs).__name__}"
        err = NeocloudError(
            f"{name}: the batch handler returned {got} for {len(batch)} inputs; "
            "it must return one output per input"
        )
        for it in batch:
            _settle(it, err)
        return
    for it, out in zip(batch, outputs, strict=True):
        _settle(it, out)


class batched:  # noqa: N801 - used as a decorator, like ``property``
    """Decorator: calls of ``self.method(item)`` are gathered into ``method(items)`` calls.

    Example::

        @batched(max_batch_size=32, max_wait_ms=5)
        def encode(self, texts: list[str]) -> list[list[float]]: ...

        vec = await self.encode("hello")     # inside an async handler

    The decorated method takes a list and returns one output per input (see
    :class:`Batcher` for the rules). One :class:`Batcher` is made per instance.
    """

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
    ) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.attr = ""

    def __call__(self, fn: Callable[..., Any]) -> batched:
        self.fn = fn
        return self

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = f"_neocloud_batcher_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        batcher = obj.__dict__.get(self.attr)
        if batcher is None:
            assert self.fn is not None
            batcher = Batcher(
                self.fn.__get__(obj, objtype),
                max_batch_size=self.max_batch_size,
                max_wait_s=self.max_wait_s,
                name=self.attr.removeprefix("_neocloud_batcher_"),
                owner=obj,
            )
            obj.__dict__[self.attr] = batcher
        return batcher


def batchers_of(obj: Any) -> list[Batcher]:
    """Every :class:`Batcher` already created on ``obj`` (for metrics and shutdown)."""
    return [v for v in vars(obj).values() if isinstance(v, Batcher)]
