"""The dynamic batcher: concurrent requests' items share one run of a batch callable.

Model-agnostic (as LitServe's loops): it knows queues, deadlines, admission and batch policy, and
nothing of what an item is beyond an abstract cost (the forward work counts pixels). It is handed a
callable that runs a batch and one that splits a batch into groups run one after another.

* Admission (:meth:`Batcher.admit`): a request is admitted with its items' costs before any of them
  is prepared (decoded): refused at once when the items would overflow the queue, when its cost
  alone is over the in-flight budget or would not finish within its deadline even on an idle worker
  (413), or when the work already admitted leaves it no room in the budget or no time (503). An
  admission holds its cost until the request leaves it, which bounds the memory of the items in
  flight; large requests join only while the work ahead is under half their time left, so small
  ones still get through.
* Batching: one asyncio task takes up to ``max_batch_size`` items, waiting at most
  ``max_batch_delay_ms`` after the first one — and only while more are expected (admitted, not yet
  submitted), so a lone request is never held back.
* Deadlines: an item whose deadline has passed gets :class:`DeadlineExceeded` when it is taken and
  before each group runs; an item whose request is gone (its future cancelled by a 504 or a client's
  disconnect) is dropped before it costs anything.
* Where a batch runs: in ONE dedicated thread (while it runs, the event loop keeps accepting and
  decoding), or, when ``inline_max_seconds`` is above 0 and the cost estimate puts the batch under
  it, on the event loop itself: for a worker with one core to itself a small batch's hand-off to the
  thread and back, with the GIL changing hands, costs more CPU than it saves (``bench/HISTORY.md``).
  Nothing arrives during an inline run, so the clients it answers send their next requests just
  after it: the next batch waits for as many items as the inline one had.

The cost estimate (seconds per unit of cost) comes from the caller's warm-up
(:meth:`Batcher.calibrate`); before it, nothing runs inline and no request is refused for time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, TypeVar

from app.errors import DeadlineExceeded, GlimpseError, ModelNotReady, Overloaded, PayloadTooLarge
from app.runtime.metrics import Metrics

logger = logging.getLogger("glimpse.engine")

Item = TypeVar("Item")
Result = TypeVar("Result")
RETRY_AFTER = {"Retry-After": "1"}
# A request is refused as too large for its deadline only when the estimate is this many times the time
# left: the estimate (a full batch of small images) runs up to about 2x pessimistic for large ones.
ESTIMATE_MARGIN = 2.0


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How the batcher forms and admits batches (built from the service's settings)."""

    max_batch_size: int  # most items in one run of the batch callable
    max_batch_delay_ms: float  # longest wait for more items once the first is queued
    max_queue_size: int  # most items admitted at once (queued, being prepared or running)
    max_inflight_cost: int  # most cost of large requests admitted at once: bounds their memory
    inline_max_seconds: float  # batches estimated this short run on the event loop; 0: never


@dataclass(slots=True, eq=False)
class _Job(Generic[Item, Result]):
    item: Item
    cost: int
    deadline: float
    future: asyncio.Future[Result]
    enqueued_at: float = field(default_factory=time.perf_counter)


RunBatch = Callable[[list[Item]], list[Result | GlimpseError]]
SplitBatch = Callable[[list[Item]], list[list[int]]]


class Admission(Generic[Item, Result]):
    """One request's place in the batcher: its items' cost is held from admission until it leaves.

    Use as a context manager around the request's preparation and :meth:`submit`.
    """

    __slots__ = ("_batcher", "_cost", "_count", "_deadline", "_expected", "_large")

    def __init__(
        self, batcher: Batcher[Item, Result], count: int, cost: int, large: bool, deadline: float
    ) -> None:
        self._batcher = batcher
        self._count = count
        self._cost = cost
        self._large = large
        self._deadline = deadline
        self._expected = count  # items admitted but not yet submitted

    def __enter__(self) -> Admission[Item, Result]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        batcher = self._batcher
        if self._expected:  # left without submitting (a decoding error): no longer waited for
            batcher._expected -= self._expected
            self._expected = 0
            batcher._wakeup.set()
        batcher._admitted_count -= self._count
        batcher._admitted_cost -= self._cost
        if self._large:
            batcher._admitted_large_cost -= self._cost

    async def submit(self, items: Sequence[Item], costs: Sequence[int]) -> list[Result]:
        """Queue the items (all or none) and wait for their results, in order.

        Raises:
            ModelNotReady: The batcher is shutting down.
            DeadlineExceeded: The deadline passed before the items ran.
            GlimpseError: What the batch callable answered for an item (for example Overloaded).
        """
        batcher = self._batcher
        if batcher._closing:
            raise ModelNotReady("the service is shutting down", RETRY_AFTER)
        batcher._expected -= self._expected
        self._expected = 0
        return await batcher._enqueue(items, costs, self._deadline)


class Batcher(Generic[Item, Result]):
    """Owns the queue, the batching task and the thread that runs batches (module docstring).

    Args:
        run: Runs one group of items, synchronously; returns a result or a domain error per item.
        split: Splits a batch into groups (indices into it) to run one after another.
        policy: Sizes, delays and budgets.
        metrics: Where queue depth, waits, batch sizes and run times are observed.
    """

    def __init__(
        self,
        run: RunBatch[Item, Result],
        split: SplitBatch[Item],
        policy: BatchPolicy,
        metrics: Metrics,
        thread_name: str = "glimpse-inference",
    ) -> None:
        self.run = run
        self.split = split
        self.policy = policy
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.seconds_per_cost = 0.0  # the warm-up's estimate; 0: not measured
        self._inline_max_cost = 0  # a batch of at most this cost runs on the event loop
        self._queue: deque[_Job[Item, Result]] = deque()
        self._wakeup = asyncio.Event()  # set when items arrive
        self._idle = asyncio.Event()  # set while the queue is empty and no batch runs
        self._idle.set()
        self._expected = 0  # items admitted and not yet submitted: being prepared, coming soon
        self._admitted_count = 0
        self._admitted_cost = 0
        self._admitted_large_cost = 0  # what the in-flight budget bounds
        # A request of at most this cost is small: a full queue of them stays within the budget.
        self._small_cost = policy.max_inflight_cost // policy.max_queue_size
        self._inline_batch = 0  # items in the last batch if it ran on the event loop, else 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def calibrate(self, seconds_per_cost: float) -> None:
        """Set the cost estimate: seconds one unit of cost takes in a full batch on this machine."""
        self.seconds_per_cost = seconds_per_cost
        if seconds_per_cost > 0 and self.policy.inline_max_seconds > 0:
            self._inline_max_cost = int(self.policy.inline_max_seconds / seconds_per_cost)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._batch_loop(), name="glimpse-batcher")

    async def stop(self, drain_timeout_s: float) -> None:
        """Refuse new work, let queued items finish (bounded), then stop the task and the thread."""
        self._closing = True
        with suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s):
                await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(ModelNotReady("the service is shutting down"))
        self._queue.clear()
        self.executor.shutdown(wait=True)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- admission ---------------------------------------------------------------------------------
    def admit(self, costs: Sequence[int], deadline: float) -> Admission[Item, Result]:
        """Admit a request's items by their costs, before they are prepared.

        A small request (at most ``max_inflight_cost / max_queue_size``: a full queue of them stays
        within the budget) is never refused for cost, only when the work ahead of it and its own would
        not finish before its deadline. A larger one must fit in the in-flight budget beside the other
        large ones, and is admitted only while the work ahead of it is under half the time left: the
        small requests that arrive behind it still get through.

        Raises:
            ModelNotReady: The batcher is shutting down.
            PayloadTooLarge: The items' cost is over the in-flight budget, or the estimate puts them at
                over twice the time left before ``deadline`` (a ``time.perf_counter`` value) even on an
                idle worker.
            Overloaded: The items would overflow the queue, or the work already admitted leaves them
                no room in the budget or no time before the deadline (with Retry-After).
        """
        if self._closing:
            raise ModelNotReady("the service is shutting down", RETRY_AFTER)
        policy = self.policy
        count, cost = len(costs), sum(costs)
        if self._admitted_count + count > policy.max_queue_size:
            raise Overloaded("the inference queue is full; retry shortly", RETRY_AFTER)
        large = cost > self._small_cost
        if large:
            self._check_budget(cost)
        if self.seconds_per_cost > 0:
            self._check_time(cost, deadline, large)
        self._admitted_count += count
        self._admitted_cost += cost
        if large:
            self._admitted_large_cost += cost
        self._expected += count
        return Admission(self, count, cost, large, deadline)

    def _check_budget(self, cost: int) -> None:
        budget = self.policy.max_inflight_cost
        if cost > budget:
            raise PayloadTooLarge(
                f"the request's images have {cost} pixels in all; at most {budget} are processed at "
                "once: send fewer or smaller images"
            )
        if self._admitted_large_cost + cost > budget:
            raise Overloaded(
                f"the server is busy with {self._admitted_large_cost} pixels of other large images; "
                "retry shortly",
                RETRY_AFTER,
            )

    def _check_time(self, cost: int, deadline: float, large: bool) -> None:
        left = deadline - time.perf_counter()
        alone = cost * self.seconds_per_cost
        if alone > ESTIMATE_MARGIN * left:
            raise PayloadTooLarge(
                f"the request's images ({cost} pixels) would take about {alone:.1f} s on this server; its "
                f"deadline leaves {max(left, 0.0):.1f} s: send fewer or smaller images"
            )
        ahead = self._admitted_cost * self.seconds_per_cost
        if (ahead > left / 2) if large else (ahead + alone > left):
            raise Overloaded(
                f"the server has about {ahead:.1f} s of work ahead of this request, which would not "
                "finish within its deadline; retry shortly",
                RETRY_AFTER,
            )

    async def submit(self, items: Sequence[Item], costs: Sequence[int], deadline: float) -> list[Result]:
        """Admit and submit in one step: :meth:`admit`, then :meth:`Admission.submit`."""
        with self.admit(costs, deadline) as admission:
            return await admission.submit(items, costs)

    async def _enqueue(self, items: Sequence[Item], costs: Sequence[int], deadline: float) -> list[Result]:
        loop = asyncio.get_running_loop()
        jobs = [
            _Job(item, cost, deadline, loop.create_future()) for item, cost in zip(items, costs, strict=True)
        ]
        self._queue.extend(jobs)
        self._idle.clear()
        self.metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        try:
            if len(jobs) == 1:  # most requests: no gathering future and callbacks to set up
                return [await jobs[0].future]
            return list(await asyncio.gather(*(job.future for job in jobs)))
        finally:
            for job in jobs:  # a caller that gave up (timeout, disconnect): its jobs are dropped
                job.future.cancel()

    # -- batching ----------------------------------------------------------------------------------
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather_more()
            jobs = self._take_batch()
            if not jobs:
                continue
            inline = sum(job.cost for job in jobs) <= self._inline_max_cost
            self._inline_batch = len(jobs) if inline else 0
            try:
                if inline:
                    outcomes = self._run_jobs(jobs)
                else:
                    outcomes = await loop.run_in_executor(self.executor, self._run_jobs, jobs)
            except Exception as exc:
                logger.exception("a batch of %d failed", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, outcome in zip(jobs, outcomes, strict=True):
                if outcome is None or job.future.done():  # dropped, or its request is gone
                    continue
                if isinstance(outcome, GlimpseError):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    async def _gather_more(self) -> None:
        """Wait for more items while they are expected, up to the batch size and the delay."""
        policy = self.policy
        flush_at = self._queue[0].enqueued_at + policy.max_batch_delay_ms / 1000
        while len(self._queue) < policy.max_batch_size and (
            self._expected > 0 or len(self._queue) < self._inline_batch
        ):
            remaining = flush_at - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Job[Item, Result]]:
        now = time.perf_counter()
        jobs: list[_Job[Item, Result]] = []
        while self._queue and len(jobs) < self.policy.max_batch_size:
            job = self._queue.popleft()
            if job.future.done():
                continue
            if job.deadline <= now:
                job.future.set_exception(
                    DeadlineExceeded("the request's deadline passed while it was queued")
                )
                continue
            self.metrics.queue_wait_seconds.observe(now - job.enqueued_at)
            jobs.append(job)
        self.metrics.queue_depth.set(len(self._queue))
        return jobs

    # -- running (the thread or, for short batches, the event loop) ----------------------------------
    def _run_jobs(self, jobs: list[_Job[Item, Result]]) -> list[Result | GlimpseError | None]:
        """Each job's result or error, group by group; None for a job whose request is gone.

        Before each group, jobs past their deadline get :class:`DeadlineExceeded` and jobs whose
        future is done (cancelled on the event loop; reading it from this thread is a benign race: at
        worst one group runs for a request that has just left) are dropped.
        """
        started = time.perf_counter()
        outcomes: list[Result | GlimpseError | None] = [None] * len(jobs)
        groups = self.split([job.item for job in jobs]) if len(jobs) > 1 else [[0]]
        for group in groups:
            now = time.perf_counter()
            live = []
            for index in group:
                job = jobs[index]
                if job.future.done():
                    continue
                if job.deadline <= now:
                    outcomes[index] = DeadlineExceeded("the request's deadline passed before its turn")
                    continue
                live.append(index)
            if not live:
                continue
            results = self.run([jobs[index].item for index in live])
            for index, result in zip(live, results, strict=True):
                outcomes[index] = result
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        return outcomes
