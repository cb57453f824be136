"""The batcher with a fake batch callable: batching policy, admission, deadlines, dropped work, threads.

No model: items are integers, their cost is their value unless a test says otherwise, and a run answers
each item with ten times it. Waits that a broken policy would make long are set to a minute and the
tests are bounded by a few seconds, so they assert outcomes and hold on a loaded machine.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import pytest

from app.engine.batcher import Batcher, BatchPolicy
from app.errors import DeadlineExceeded, GlimpseError, ModelNotReady, Overloaded, PayloadTooLarge
from app.runtime.metrics import Metrics

pytestmark = pytest.mark.anyio

POLICY = BatchPolicy(
    max_batch_size=8,
    max_batch_delay_ms=60_000.0,  # a batch that waited for it would fail the test's timeout
    max_queue_size=64,
    max_inflight_cost=10_000,
    inline_max_seconds=0.0,
)
BOUND_S = 10.0  # far above any wait a correct policy makes


@dataclass
class FakeRun:
    """The batch callable: records each run's items and thread; ``block`` holds runs in the thread."""

    runs: list[list[int]] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    block: threading.Event | None = None
    sleep_s: float = 0.0
    errors: dict[int, GlimpseError] = field(default_factory=dict)
    started: threading.Event = field(default_factory=threading.Event)

    def __call__(self, items: list[int]) -> list[int | GlimpseError]:
        self.runs.append(list(items))
        self.threads.append(threading.current_thread().name)
        self.started.set()
        if self.block is not None:
            self.block.wait(BOUND_S)
        time.sleep(self.sleep_s)
        return [self.errors.get(item, item * 10) for item in items]


def one_group(items: list[int]) -> list[list[int]]:
    return [list(range(len(items)))]


def by_parity(items: list[int]) -> list[list[int]]:
    """Even items run first, then odd ones: two groups."""
    return [
        [i for i, item in enumerate(items) if item % 2 == 0],
        [i for i, item in enumerate(items) if item % 2],
    ]


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., tuple[Batcher[int, int], FakeRun]]]:
    """Started batchers with a fake run; ``split`` and policy fields by keyword. Stopped after the test."""
    made: list[Batcher[int, int]] = []

    def build(
        split: Callable[[list[int]], list[list[int]]] = one_group, **policy: float
    ) -> tuple[Batcher[int, int], FakeRun]:
        run = FakeRun()
        batcher = Batcher[int, int](run, split, replace(POLICY, **policy), Metrics())  # type: ignore[arg-type]
        batcher.start()
        made.append(batcher)
        return batcher, run

    yield build
    for batcher in made:
        await batcher.stop(drain_timeout_s=1.0)


def deadline(seconds: float = BOUND_S) -> float:
    return time.perf_counter() + seconds


async def submit(batcher: Batcher[int, int], *items: int, seconds: float = BOUND_S) -> list[int]:
    return await batcher.submit(items, items, deadline(seconds))


async def test_a_lone_request_is_not_held_back(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make()
    async with asyncio.timeout(BOUND_S):  # the minute's delay is not waited: nothing else is expected
        assert await submit(batcher, 3) == [30]
    assert run.runs == [[3]]


async def test_admitted_requests_are_waited_for_and_share_one_run(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make()
    first, second = batcher.admit([1], deadline()), batcher.admit([2], deadline())
    with first, second:
        one = asyncio.create_task(first.submit([1], [1]))
        await asyncio.sleep(0.05)
        assert run.runs == []  # the second request is being prepared: the batch waits for it
        async with asyncio.timeout(BOUND_S):
            two = await second.submit([2], [2])
            assert (await one, two) == ([10], [20])
    assert run.runs == [[1, 2]]


async def test_an_admission_that_leaves_without_submitting_is_no_longer_waited_for(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make()
    with batcher.admit([1], deadline()) as first:
        with batcher.admit([2], deadline()):  # decoding fails: the request leaves
            one = asyncio.create_task(first.submit([1], [1]))
            await asyncio.sleep(0.05)
        async with asyncio.timeout(BOUND_S):
            assert await one == [10]
    assert run.runs == [[1]]


async def test_batches_hold_at_most_max_batch_size_items(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make(max_batch_size=4)
    async with asyncio.timeout(BOUND_S):
        assert await submit(batcher, *range(10)) == [i * 10 for i in range(10)]
    assert run.runs == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_full_queue_is_refused_at_admission_with_retry_after(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, _ = make(max_queue_size=4)
    with batcher.admit([1, 1, 1], deadline()):
        with pytest.raises(Overloaded) as refused:
            batcher.admit([1, 1], deadline())
        assert refused.value.headers == {"Retry-After": "1"}
        with batcher.admit([1], deadline()):
            pass
    with batcher.admit([1, 1, 1, 1], deadline()):  # all freed again
        pass


async def test_the_in_flight_cost_budget_refuses_too_large_at_once_and_too_many_for_now(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, _ = make(max_inflight_cost=100)
    with pytest.raises(PayloadTooLarge, match="at most 100"):
        batcher.admit([60, 60], deadline())  # can never fit: 413
    with batcher.admit([60], deadline()):
        with pytest.raises(Overloaded, match="busy") as busy:
            batcher.admit([60], deadline())  # fits once the first leaves: 503
        assert busy.value.headers == {"Retry-After": "1"}
        with batcher.admit([40], deadline()):
            pass
    with batcher.admit([100], deadline()):
        pass


async def test_work_that_cannot_finish_before_its_deadline_is_refused_before_it_is_prepared(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make()
    batcher.calibrate(0.01)  # 100 units of cost a second
    with pytest.raises(PayloadTooLarge, match=r"would take about 10\.0 s"):
        batcher.admit([1000], deadline(4.0))  # over twice the time left even alone: 413
    with batcher.admit([300], deadline(5.0)):  # 3 s: admitted
        with pytest.raises(Overloaded, match="work ahead"):
            batcher.admit([300], deadline(5.0))  # 3 s ahead of a large request: over half of 5 s: 503
        with batcher.admit([100], deadline(5.0)):
            pass
    assert run.runs == []


async def test_small_requests_pass_a_full_budget_and_large_ones_leave_them_half_the_time(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, _ = make(max_inflight_cost=6400, max_queue_size=64)  # small: at most 100
    batcher.calibrate(0.01)
    with batcher.admit([6000], deadline(100.0)):  # 60 s of a 100 s deadline, the whole budget but 400
        with pytest.raises(Overloaded, match="busy"):
            batcher.admit([500], deadline(100.0))
        with pytest.raises(Overloaded, match="work ahead"):
            batcher.admit([300], deadline(100.0))  # 60 s ahead: more than half of the time left
        with batcher.admit([100], deadline(100.0)), batcher.admit([100], deadline(100.0)):
            pass  # small: past the budget, within the time


async def test_an_expired_request_gets_deadline_exceeded_and_never_runs(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make()
    with pytest.raises(DeadlineExceeded):
        await batcher.submit([1], [1], time.perf_counter() - 1)
    assert run.runs == []


async def test_deadlines_are_checked_between_groups(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    """A batch of two groups: the first runs past the second's deadline, which then never runs."""
    batcher, run = make(split=by_parity)
    run.sleep_s = 1.5
    with batcher.admit([2], deadline()) as long, batcher.admit([1], deadline(1.0)) as short:
        kept = asyncio.create_task(long.submit([2], [2]))
        with pytest.raises(DeadlineExceeded, match="before its turn"):
            await short.submit([1], [1])
        assert await kept == [20]
    assert run.runs == [[2]]


async def test_work_whose_request_is_gone_is_dropped_before_it_runs(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make()
    run.block = threading.Event()
    running = asyncio.create_task(submit(batcher, 2))  # holds the thread
    assert await asyncio.to_thread(run.started.wait, BOUND_S)
    gone = asyncio.create_task(submit(batcher, 4))  # queued behind it, then its client leaves
    await asyncio.sleep(0.05)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    run.block.set()
    async with asyncio.timeout(BOUND_S):
        assert await running == [20]
        assert await submit(batcher, 6) == [60]
    assert 4 not in [item for items in run.runs for item in items]


async def test_a_group_whose_requests_left_during_an_earlier_group_is_dropped(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make(split=by_parity)
    run.block = threading.Event()
    with batcher.admit([2], deadline()) as even, batcher.admit([1], deadline()) as odd:
        first = asyncio.create_task(even.submit([2], [2]))
        second = asyncio.create_task(odd.submit([1], [1]))
        assert await asyncio.to_thread(run.started.wait, BOUND_S)  # the even group runs, blocked
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        run.block.set()
        async with asyncio.timeout(BOUND_S):
            assert await first == [20]
    assert run.runs == [[2]]


async def test_an_item_s_error_fails_only_its_request_and_a_failed_run_fails_its_batch(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make()
    run.errors[3] = Overloaded("out of device memory for this image")
    with batcher.admit([3], deadline()) as bad, batcher.admit([4], deadline()) as good:
        failing = asyncio.create_task(bad.submit([3], [3]))
        assert await good.submit([4], [4]) == [40]
        with pytest.raises(Overloaded):
            await failing
    broken = FakeRun()

    def raising(items: list[int]) -> list[int | GlimpseError]:
        broken(items)
        raise RuntimeError("the device fell over")

    batcher.run = raising
    with pytest.raises(RuntimeError, match="fell over"):
        await submit(batcher, 5)
    batcher.run = run
    assert await submit(batcher, 6) == [60]  # the batcher lives on


async def test_short_batches_run_on_the_event_loop_and_long_ones_in_the_thread(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make(inline_max_seconds=0.02)
    await submit(batcher, 5)  # not calibrated yet: the thread
    batcher.calibrate(0.001)  # 20 units of cost fit 20 ms
    await submit(batcher, 5)
    await submit(batcher, 500)
    assert run.threads == ["glimpse-inference_0", threading.current_thread().name, "glimpse-inference_0"]
    other, other_run = make()  # inline_max_seconds 0: always the thread
    other.calibrate(0.001)
    await submit(other, 5)
    assert other_run.threads == ["glimpse-inference_0"]


async def test_after_an_inline_batch_the_next_waits_for_as_many_items_but_no_longer_than_the_delay(
    make: Callable[..., tuple[Batcher[int, int], FakeRun]],
) -> None:
    batcher, run = make(inline_max_seconds=0.02, max_batch_delay_ms=300.0)
    batcher.calibrate(0.001)
    await submit(batcher, 1, 1, 1)  # an inline batch of three
    first = asyncio.create_task(submit(batcher, 2))
    await asyncio.sleep(0.05)
    assert run.runs == [[1, 1, 1]]  # the next batch waits for two more
    async with asyncio.timeout(BOUND_S):
        await asyncio.gather(first, submit(batcher, 3, 4))
        assert run.runs == [[1, 1, 1], [2, 3, 4]]
        await submit(batcher, 5)  # of three expected, one comes: it goes when the delay is over
    assert run.runs[-1] == [5]


async def test_stopping_refuses_new_work_and_fails_what_is_still_queued() -> None:
    run = FakeRun(block=threading.Event())
    batcher = Batcher[int, int](run, one_group, POLICY, Metrics())
    batcher.start()
    running = asyncio.create_task(submit(batcher, 1))
    assert await asyncio.to_thread(run.started.wait, BOUND_S)
    queued = asyncio.create_task(submit(batcher, 2))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(batcher.stop(drain_timeout_s=0.1))
    await asyncio.sleep(0.01)
    with pytest.raises(ModelNotReady):
        batcher.admit([1], deadline())
    await asyncio.sleep(0.2)
    run.block.set()  # type: ignore[union-attr]
    await stopping
    with pytest.raises(ModelNotReady):
        await queued
    running.cancel()
