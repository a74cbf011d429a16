"""Dynamic request batcher: group compatible LLM requests and schedule them by priority.

Local servers answer a batch of similar-length prompts for the same model for little more
than one prompt, and answer 503 once their own queue is full; so this scheduler batches,
bounds its queue, and keeps urgent work first. Rules (tested in tests/test_batcher.py and
benchmarks/test_batcher_invariants.py):

1. Every submitted request gets exactly one outcome: a result, an exception or cancellation.
2. A batch holds one model and one priority, at most ``max_batch_size`` requests, each with
   ``abs(tokens - seed) <= length_tolerance * seed`` for the batch's first (seed) request.
3. The seed is the queued request of highest priority, oldest first; members are the oldest
   compatible requests of the seed's priority. So no request is ever dispatched after a
   lower-priority request that arrived later (strict priority: LOW may starve under load).
4. The seed waits until ``arrival + window_s`` for members unless the batch is full; any
   arrival during the wait re-picks the seed. ``window_s = 0`` dispatches at once.
5. At most ``max_concurrency`` batches are in the handler; a batch is formed only when a
   slot is free, so priority is decided at dispatch time, not at arrival.
6. At most ``max_queue`` requests wait (in-flight ones not counted); beyond that
   ``submit_nowait`` raises QueueFullError at once and leaves the queue untouched.

Data structure: a heap keyed ``(-priority, arrival_seq)`` finds the seed in O(log n). Members
come from deques in arrival order, one per (priority, model, length class), the classes
geometric with ratio ``1 + length_tolerance``: a seed's compatible lengths span a few classes
(at most 4 up to a tolerance of 0.5), so forming a batch scans a few short deques, never the
whole queue. Taken and cancelled entries are deleted lazily, compacted when they pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import math
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any, Generic, TypeVar

from lmgauge.errors import BatcherClosedError, BatcherError, QueueFullError

R = TypeVar("R")


class Priority(enum.IntEnum):
    """Higher value is more urgent."""

    LOW = 0
    NORMAL = 1
    HIGH = 2


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One request; ``payload`` is opaque to the batcher and only read by the handler."""

    model: str
    prompt_tokens: int
    priority: Priority = Priority.NORMAL
    payload: object = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        tokens = self.prompt_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
            raise ValueError(f"prompt_tokens must be a positive int, got {tokens!r}")
        object.__setattr__(self, "priority", Priority(self.priority))


@dataclass(frozen=True, slots=True)
class Batch:
    """What the handler receives: requests of one model and priority, in arrival order."""

    model: str
    seed_prompt_tokens: int
    requests: tuple[BatchRequest, ...]
    sequence: int

    @property
    def priority(self) -> Priority:
        return self.requests[0].priority


@dataclass(frozen=True, slots=True)
class BatcherStats:
    batches_dispatched: int
    requests_dispatched: int
    requests_rejected: int
    requests_cancelled: int


Handler = Callable[[Batch], Awaitable[Sequence[R]]]
"""Returns one result per request of the batch, in the same order."""

_QUEUED, _DISPATCHED, _GONE = 0, 1, 2


class _Entry:
    __slots__ = ("arrival", "future", "request", "seq", "state")

    def __init__(self, request: BatchRequest, future: asyncio.Future[Any], seq: int, at: float):
        self.request = request
        self.future = future
        self.seq = seq
        self.arrival = at
        self.state = _QUEUED


def _check(name: str, value: float, *, integer: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        ok = False
    else:  # chained comparisons also reject NaN, infinities and ints too large for a float
        ok = value >= 1 if integer else 0 <= value <= sys.float_info.max
    if not ok:
        wanted = "an int >= 1" if integer else "a finite number >= 0"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


class Batcher(Generic[R]):
    """Asyncio scheduler in front of a batch handler; see the module docstring for rules.

    Requests may be submitted before ``start()``; they wait in the queue. The clock must
    tick in seconds on the event loop's scale: it stamps arrivals and times the window.
    """

    def __init__(
        self,
        handler: Handler[R],
        *,
        max_batch_size: int = 8,
        window_s: float = 0.010,
        length_tolerance: float = 0.20,
        max_concurrency: int = 4,
        max_queue: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not callable(handler):
            raise ValueError(f"handler must be an async callable, got {handler!r}")
        _check("max_batch_size", max_batch_size, integer=True)
        _check("window_s", window_s, integer=False)
        _check("length_tolerance", length_tolerance, integer=False)
        _check("max_concurrency", max_concurrency, integer=True)
        _check("max_queue", max_queue, integer=True)
        if not callable(clock):
            raise ValueError(f"clock must be a callable returning seconds, got {clock!r}")
        self._handler = handler
        self._max_batch_size = max_batch_size
        self._window_s = float(window_s)
        self._tolerance = float(length_tolerance)
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self._clock = clock
        self._heap: list[tuple[int, int, _Entry]] = []
        self._buckets: dict[tuple[Priority, str, int], deque[_Entry]] = {}
        # tolerance 0 buckets exact lengths; tiny tolerances get classes of 0.1 % at least
        self._class_log = math.log1p(max(self._tolerance, 1e-3)) if self._tolerance else 0.0
        self._wakeup = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._next_seq = 0
        self._queued = 0
        self._in_flight = 0
        self._active = 0
        self._batches = 0
        self._dispatched = 0
        self._rejected = 0
        self._cancelled = 0

    # -- public API -----------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(self._batches, self._dispatched, self._rejected, self._cancelled)

    def submit_nowait(self, request: BatchRequest) -> asyncio.Future[R]:
        """Queue ``request``; synchronous so that backpressure is immediate."""
        if self._closing:
            raise BatcherClosedError("batcher is closed; it accepts no new requests")
        if self._queued >= self._max_queue:
            self._rejected += 1
            raise QueueFullError(
                f"batcher queue is full ({self._queued} requests waiting); "
                "retry later or raise max_queue"
            )
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        entry = _Entry(request, future, self._next_seq, self._clock())
        self._next_seq += 1
        heapq.heappush(self._heap, (-request.priority, entry.seq, entry))
        key = (request.priority, request.model, self._length_class(request.prompt_tokens))
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = deque()
        bucket.append(entry)
        self._queued += 1
        future.add_done_callback(partial(self._on_done, entry))
        self._wakeup.set()
        return future

    async def submit(self, request: BatchRequest) -> R:
        return await self.submit_nowait(request)

    async def start(self) -> None:
        if self._closing:
            raise BatcherClosedError("batcher is closed; it cannot be started again")
        self._ensure_dispatcher()

    async def close(self, *, drain: bool = True) -> None:
        """Stop accepting requests; return once every request has its outcome.

        ``drain=True`` dispatches everything queued (no window wait: nothing can join);
        ``drain=False`` fails queued requests with BatcherClosedError. In-flight batches
        always finish. Do not call with ``drain=True`` from inside the handler.
        """
        self._closing = True
        if drain:
            self._ensure_dispatcher()
        else:
            self._fail_queued("batcher closed with drain=False before this request was sent")
        self._wakeup.set()
        if self._dispatcher is not None:
            await asyncio.wait([self._dispatcher])  # not ``await task``: that would cancel it
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def __aenter__(self) -> Batcher[R]:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        await self.close(drain=exc_type is None)  # on an error, do not wait for the queue

    # -- scheduling -----------------------------------------------------------------------

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is None:
            loop = asyncio.get_running_loop()
            self._dispatcher = loop.create_task(self._dispatch_loop(), name="lmgauge-batcher")

    def _on_done(self, entry: _Entry, _future: asyncio.Future[R]) -> None:
        # Only a cancellation (or a caller's own set_result) completes a queued future.
        if entry.state == _QUEUED:
            self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        entry.state = _GONE
        self._queued -= 1
        self._cancelled += 1
        self._wakeup.set()

    def _live(self, entry: _Entry) -> bool:
        """Whether ``entry`` still waits; notices a cancellation before its callback runs."""
        if entry.state != _QUEUED:
            return False
        if entry.future.done():
            self._forget(entry)
            return False
        return True

    def _peek_seed(self) -> _Entry | None:
        heap = self._heap
        while heap:
            entry = heap[0][2]
            if self._live(entry):
                return entry
            heapq.heappop(heap)
        return None

    def _length_class(self, tokens: float) -> int:
        if not self._class_log:
            return int(tokens)
        return int(math.log(max(tokens, 1.0)) / self._class_log)  # monotonic in tokens

    def _collect(self, seed: _Entry) -> list[_Entry]:
        """The oldest compatible live entries, seed first (it is the oldest of its priority)."""
        request, tokens = seed.request, seed.request.prompt_tokens
        bound = self._tolerance * tokens
        limit = self._max_batch_size
        first = last = self._length_class(tokens)  # exact for tolerance 0, even past 2**53
        if bound:
            first, last = self._length_class(tokens - bound), self._length_class(tokens + bound)
        found: list[_Entry] = []
        for length_class in range(first, last + 1):
            key = (request.priority, request.model, length_class)
            bucket = self._buckets.get(key)
            if bucket is None:
                continue
            while bucket and not self._live(bucket[0]):
                bucket.popleft()
            if not bucket:
                del self._buckets[key]
                continue
            taken = 0  # the oldest ``limit`` of each class suffice to find the oldest overall
            for entry in bucket:
                if abs(entry.request.prompt_tokens - tokens) <= bound and self._live(entry):
                    found.append(entry)
                    taken += 1
                    if taken == limit:
                        break
        if first != last:
            found.sort(key=attrgetter("seq"))
        return found[:limit]

    async def _dispatch_loop(self) -> None:
        try:
            while True:
                self._wakeup.clear()
                if self._active >= self._max_concurrency:
                    await self._wakeup.wait()
                    continue
                seed = self._peek_seed()
                if seed is None:
                    if self._closing:
                        return
                    await self._wakeup.wait()
                    continue
                members = self._collect(seed)
                if len(members) < self._max_batch_size and not self._closing:
                    delay = seed.arrival + self._window_s - self._clock()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(delay):
                                await self._wakeup.wait()
                        continue  # re-pick: an arrival may be more urgent or fill the batch
                self._launch(seed, members)
        finally:  # also on cancellation (event loop shutdown): nothing may be left hanging
            self._fail_queued("batcher stopped before this request was sent")

    def _launch(self, seed: _Entry, members: list[_Entry]) -> None:
        for entry in members:
            entry.state = _DISPATCHED
        n = len(members)
        self._queued -= n
        self._in_flight += n
        self._active += 1
        self._dispatched += n
        batch = Batch(
            model=seed.request.model,
            seed_prompt_tokens=seed.request.prompt_tokens,
            requests=tuple(entry.request for entry in members),
            sequence=self._batches,
        )
        self._batches += 1
        task = asyncio.get_running_loop().create_task(self._run_batch(batch, members))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if len(self._heap) > 2 * self._queued + 1024:
            self._compact()

    async def _run_batch(self, batch: Batch, members: list[_Entry]) -> None:
        try:
            results = await self._handler(batch)
            if not isinstance(results, Sequence) or len(results) != len(members):
                got = len(results) if isinstance(results, Sequence) else type(results).__name__
                raise BatcherError(
                    f"handler returned the wrong number of results for batch {batch.sequence}:"
                    f" expected {len(members)} results, got {got}"
                )
        except asyncio.CancelledError:
            for entry in members:
                entry.future.cancel()
            raise
        except BaseException as exc:  # every member gets the handler's own exception
            for entry in members:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for entry, result in zip(members, results, strict=True):
                if not entry.future.done():  # a caller may have cancelled it meanwhile
                    entry.future.set_result(result)
        finally:
            self._active -= 1
            self._in_flight -= len(members)
            self._wakeup.set()

    def _fail_queued(self, message: str) -> None:
        for _, _, entry in self._heap:
            if entry.state == _QUEUED:
                entry.state = _GONE
                if not entry.future.done():
                    entry.future.set_exception(BatcherClosedError(message))
        self._heap.clear()
        self._buckets.clear()
        self._queued = 0

    def _compact(self) -> None:
        """Drop lazily deleted entries once they outnumber live ones (amortized O(1))."""
        self._heap = [item for item in self._heap if item[2].state == _QUEUED]
        heapq.heapify(self._heap)
        for key, bucket in list(self._buckets.items()):
            kept = deque(entry for entry in bucket if entry.state == _QUEUED)
            if kept:
                self._buckets[key] = kept
            else:
                del self._buckets[key]
