"""Dynamic batching: grouping, isolation, output checks, queue timeouts, cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from neocloud.errors import NeocloudError, Timeout, Unavailable
from neocloud.serving.batching import TRACKER_ATTR, Batcher, LoadTracker, batched


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_concurrent_calls_share_batches_and_get_their_own_output() -> None:
    calls: list[list[int]] = []

    def double(xs: list[int]) -> list[int]:
        calls.append(list(xs))
        return [x * 2 for x in xs]

    async def main() -> list[int]:
        b = Batcher(double, max_batch_size=4, max_wait_s=0.5)
        return list(await asyncio.gather(*(b.submit(i) for i in range(10))))

    assert run(main()) == [i * 2 for i in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]
    assert sorted(x for c in calls for x in c) == list(range(10))


def test_exception_output_fails_only_its_item() -> None:
    def f(xs: list[int]) -> list[Any]:
        return [ValueError("bad") if x == 2 else x for x in xs]

    async def main() -> list[Any]:
        b = Batcher(f, max_batch_size=8, max_wait_s=0.2)
        return list(await asyncio.gather(*(b.submit(i) for i in range(4)),
                                         return_exceptions=True))

    out = run(main())
    assert out[:2] == [0, 1] and out[3] == 3
    assert isinstance(out[2], ValueError)


def test_raising_batch_is_retried_item_by_item() -> None:
    sizes: list[int] = []

    async def f(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        if -1 in xs:
            raise ValueError("cannot take -1")
        return [x + 1 for x in xs]

    async def main() -> list[Any]:
        b = Batcher(f, max_batch_size=8, max_wait_s=0.2)
        return list(await asyncio.gather(*(b.submit(x) for x in (1, -1, 3)),
                                         return_exceptions=True))

    out = run(main())
    assert out[0] == 2 and out[2] == 4 and isinstance(out[1], ValueError)
    assert sizes[0] == 3 and sizes[1:] == [1, 1, 1]


def test_wrong_output_count_fails_the_batch_clearly() -> None:
    async def main() -> list[Any]:
        b = Batcher(lambda xs: xs[:1], max_batch_size=8, max_wait_s=0.2)
        return list(await asyncio.gather(*(b.submit(x) for x in (1, 2)),
                                         return_exceptions=True))

    out = run(main())
    assert all(isinstance(e, NeocloudError) and "1 outputs for 2 inputs" in str(e) for e in out)


def test_items_past_their_deadline_are_dropped_with_timeout() -> None:
    ran: list[list[str]] = []

    async def slow(xs: list[str]) -> list[str]:
        ran.append(list(xs))
        await asyncio.sleep(0.3)
        return xs

    async def main() -> list[Any]:
        b = Batcher(slow, max_batch_size=1, max_wait_s=0)
        first = asyncio.ensure_future(b.submit("first"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(b.submit("late", timeout_s=0.05))
        return list(await asyncio.gather(first, second, return_exceptions=True))

    out = run(main())
    assert out[0] == "first" and isinstance(out[1], Timeout)
    assert ran == [["first"]]  # the expired item never ran


def test_cancelled_callers_are_skipped() -> None:
    ran: list[list[int]] = []

    async def f(xs: list[int]) -> list[int]:
        ran.append(list(xs))
        return xs

    async def main() -> int:
        b = Batcher(f, max_batch_size=8, max_wait_s=0.1)
        gone = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0)
        gone.cancel()
        return await b.submit(2)

    assert run(main()) == 2
    assert ran == [[2]]


def test_wait_ends_early_when_every_request_is_queued() -> None:
    class Owner:
        pass

    owner = Owner()
    tracker = LoadTracker()
    setattr(owner, TRACKER_ATTR, tracker)

    async def main() -> float:
        b = Batcher(lambda xs: xs, max_batch_size=32, max_wait_s=30.0, owner=owner)
        tracker.active = 1  # one request in flight: it is the one we submit
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(b.submit("x"), timeout=5)
        return loop.time() - start

    assert run(main()) < 5  # without the tracker it would wait the full 30 s
    assert tracker.parked == 0


def test_close_fails_queued_items() -> None:
    async def main() -> Any:
        b = Batcher(lambda xs: xs, max_batch_size=8, max_wait_s=10.0)
        fut = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)
        await b.close()
        with pytest.raises(Unavailable):
            await fut
        with pytest.raises(Unavailable):
            await b.submit(2)

    run(main())


def test_batched_decorator_makes_one_batcher_per_instance() -> None:
    class Model:
        def __init__(self, k: int) -> None:
            self.k = k

        @batched(max_batch_size=4, max_wait_ms=50)
        def scale(self, xs: list[int]) -> list[int]:
            return [x * self.k for x in xs]

    async def main() -> tuple[list[int], list[int]]:
        a, b = Model(2), Model(3)
        ra = await asyncio.gather(*(a.scale(i) for i in range(3)))
        rb = await asyncio.gather(*(b.scale(i) for i in range(3)))
        assert a.scale is a.scale and a.scale is not b.scale
        return list(ra), list(rb)

    assert run(main()) == ([0, 2, 4], [0, 3, 6])


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        Batcher(lambda xs: xs, max_batch_size=0)


def test_submit_many_keeps_order_and_parks_once() -> None:
    class Owner:
        pass

    owner = Owner()
    tracker = LoadTracker()
    setattr(owner, TRACKER_ATTR, tracker)
    seen: list[int] = []

    def f(xs: list[int]) -> list[int]:
        seen.append(tracker.parked)
        return [x * 10 for x in xs]

    async def main() -> list[int]:
        tracker.active = 1
        b = Batcher(f, max_batch_size=2, max_wait_s=5.0, owner=owner)
        return await asyncio.wait_for(b.submit_many([1, 2, 3]), timeout=5)

    assert run(main()) == [10, 20, 30]
    assert seen and all(p == 1 for p in seen)  # one request parked, not three
    assert tracker.parked == 0
