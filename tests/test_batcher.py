"""Unit tests of lmgauge.batcher: each rule of the module docstring, one scenario at a time.

Timing is never asserted; windows only decide batch composition, and ``asyncio.timeout``
is a hang guard so that a broken scheduler fails instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from lmgauge.batcher import Batch, Batcher, BatchRequest, Priority
from lmgauge.errors import BatcherClosedError, BatcherError, QueueFullError

GUARD_S = 2.0


def req(
    payload: object, tokens: int = 100, model: str = "m", prio: Priority = Priority.NORMAL
) -> BatchRequest:
    return BatchRequest(model=model, prompt_tokens=tokens, priority=prio, payload=payload)


class Recorder:
    """Handler that answers each request with its payload and records every batch."""

    def __init__(self, delay_s: float = 0.0, gate: asyncio.Event | None = None) -> None:
        self.batches: list[Batch] = []
        self.delay_s = delay_s
        self.gate = gate
        self.current = 0
        self.max_current = 0
        self.entered = asyncio.Condition()

    async def __call__(self, batch: Batch) -> Sequence[object]:
        self.batches.append(batch)
        self.current += 1
        self.max_current = max(self.max_current, self.current)
        async with self.entered:
            self.entered.notify_all()
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay_s)
        finally:
            self.current -= 1
        return [r.payload for r in batch.requests]

    def payloads(self) -> list[list[object]]:
        return [[r.payload for r in b.requests] for b in self.batches]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate`` holds after the handler was entered (hang-guarded)."""
        async with asyncio.timeout(GUARD_S), self.entered:
            await self.entered.wait_for(predicate)


async def loop_turns(n: int = 20) -> None:
    """Let the event loop run ``n`` times: more than the batcher needs to dispatch a request
    and the handler to answer it, so what has not happened by then was not going to."""
    for _ in range(n):
        await asyncio.sleep(0)


# -- argument validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 2.5}, "max_batch_size"),
        ({"max_batch_size": True}, "max_batch_size"),
        ({"window_s": -0.001}, "window_s"),
        ({"window_s": float("nan")}, "window_s"),
        ({"window_s": float("inf")}, "window_s"),
        ({"length_tolerance": -0.1}, "length_tolerance"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_queue": -5}, "max_queue"),
        ({"clock": 3.0}, "clock"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Batcher(Recorder(), **kwargs)  # type: ignore[arg-type]


def test_bad_handler_is_rejected() -> None:
    with pytest.raises(ValueError, match="handler"):
        Batcher(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("tokens", [0, -1, 1.5, True])
def test_request_needs_positive_int_tokens(tokens: object) -> None:
    with pytest.raises(ValueError, match="prompt_tokens"):
        BatchRequest("m", tokens)  # type: ignore[arg-type]


def test_request_validation_of_model_and_priority() -> None:
    with pytest.raises(ValueError, match="model"):
        BatchRequest("", 10)
    with pytest.raises(ValueError, match="Priority"):
        BatchRequest("m", 10, 7)  # type: ignore[arg-type]
    assert BatchRequest("m", 10, 2).priority is Priority.HIGH  # type: ignore[arg-type]


# -- results and errors --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_results_map_to_requests_in_order() -> None:
    rec = Recorder()
    async with Batcher(rec, window_s=0.0) as b:
        results = await asyncio.gather(*(b.submit(req(i)) for i in range(5)))
    assert results == [0, 1, 2, 3, 4]
    assert b.stats.requests_dispatched == 5
    assert b.stats.batches_dispatched == len(rec.batches)
    assert [batch.sequence for batch in rec.batches] == list(range(len(rec.batches)))


@pytest.mark.asyncio
async def test_requests_wait_until_start() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0)
    fut = b.submit_nowait(req("x"))
    await loop_turns()
    assert not fut.done()
    assert (b.queued, rec.batches) == (1, [])
    await b.start()
    assert await asyncio.wait_for(fut, GUARD_S) == "x"
    await b.close()


@pytest.mark.asyncio
async def test_handler_exception_reaches_every_member() -> None:
    boom = RuntimeError("boom")

    async def handler(batch: Batch) -> Sequence[object]:
        raise boom

    b: Batcher[object] = Batcher(handler, window_s=0.0)
    futs = [b.submit_nowait(req(i)) for i in range(3)]
    await b.start()
    await b.close()
    for fut in futs:
        with pytest.raises(RuntimeError, match="boom") as info:
            fut.result()
        assert info.value is boom


@pytest.mark.asyncio
async def test_wrong_result_count_fails_the_whole_batch() -> None:
    async def handler(batch: Batch) -> Sequence[object]:
        return [None] * (len(batch.requests) + 1)

    b: Batcher[object] = Batcher(handler, window_s=0.0)
    futs = [b.submit_nowait(req(i)) for i in range(2)]
    await b.close()
    for fut in futs:
        with pytest.raises(BatcherError, match="expected 2 results, got 3"):
            fut.result()


@pytest.mark.asyncio
async def test_non_sequence_result_is_an_error() -> None:
    async def handler(batch: Batch) -> Sequence[object]:
        return None  # type: ignore[return-value]

    b: Batcher[object] = Batcher(handler, window_s=0.0)
    fut = b.submit_nowait(req(1))
    await b.close()
    with pytest.raises(BatcherError, match="expected 1 results, got NoneType"):
        fut.result()


# -- backpressure --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_full_queue_rejects_at_once_and_loses_nothing() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0, max_queue=3)
    futs = [b.submit_nowait(req(i)) for i in range(3)]
    with pytest.raises(QueueFullError, match=r"full \(3 requests waiting\).*max_queue"):
        b.submit_nowait(req("rejected"))
    with pytest.raises(QueueFullError):
        await b.submit(req("rejected too"))
    assert b.queued == 3
    assert b.stats.requests_rejected == 2
    await b.close()
    assert [f.result() for f in futs] == [0, 1, 2]
    assert all("rejected" not in p for p in rec.payloads())


@pytest.mark.asyncio
async def test_in_flight_requests_do_not_count_against_the_queue() -> None:
    gate = asyncio.Event()
    rec = Recorder(gate=gate)
    b: Batcher[object] = Batcher(rec, window_s=0.0, max_queue=2, max_concurrency=1)
    await b.start()
    first = b.submit_nowait(req(0))
    await rec.wait_until(lambda: b.in_flight == 1)
    queued = [b.submit_nowait(req(i)) for i in (1, 2)]
    assert (b.queued, b.in_flight) == (2, 1)
    with pytest.raises(QueueFullError):
        b.submit_nowait(req(3))
    gate.set()
    await b.close()
    assert [f.result() for f in (first, *queued)] == [0, 1, 2]


# -- cancellation --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cancel_while_queued_is_never_dispatched() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0)
    a, c, d = (b.submit_nowait(req(x)) for x in "acd")
    c.cancel()
    await asyncio.sleep(0)  # the done-callback runs on the next loop iteration
    assert b.queued == 2
    await b.start()
    d.cancel()  # the dispatcher runs before d's done-callback: it notices d itself
    await b.close()
    assert a.result() == "a"
    assert c.cancelled()
    assert d.cancelled()
    assert [p for batch in rec.payloads() for p in batch] == ["a"]
    assert b.stats.requests_cancelled == 2


@pytest.mark.asyncio
async def test_cancelling_the_submitting_task_removes_the_request() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0)
    task = asyncio.ensure_future(b.submit(req("gone")))
    await asyncio.sleep(0)
    assert b.queued == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.queued == 0
    await b.close()
    assert rec.batches == []


@pytest.mark.asyncio
async def test_cancel_while_in_flight_discards_only_that_result() -> None:
    gate = asyncio.Event()
    rec = Recorder(gate=gate)
    b: Batcher[object] = Batcher(rec, window_s=0.0)
    futs = [b.submit_nowait(req(i)) for i in range(3)]
    await b.start()
    await rec.wait_until(lambda: b.in_flight == 3)
    futs[0].cancel()  # the first member: setting its result would break the others
    gate.set()
    async with asyncio.timeout(GUARD_S):
        assert list(await asyncio.gather(futs[1], futs[2])) == [1, 2]
        await b.close()
    assert futs[0].cancelled()
    assert len(rec.batches) == 1


# -- close ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_close_drain_delivers_everything_without_waiting_for_the_window() -> None:
    rec = Recorder(delay_s=0.001)
    b: Batcher[object] = Batcher(rec, window_s=60.0, max_concurrency=2, max_batch_size=4)
    futs = [b.submit_nowait(req(i, tokens=100 + 50 * (i % 3))) for i in range(10)]
    await b.start()
    async with asyncio.timeout(GUARD_S):
        await b.close(drain=True)
    assert [f.result() for f in futs] == list(range(10))
    assert (b.queued, b.in_flight) == (0, 0)
    with pytest.raises(BatcherClosedError):
        b.submit_nowait(req("late"))
    with pytest.raises(BatcherClosedError):
        await b.start()
    await b.close()  # idempotent


@pytest.mark.asyncio
async def test_close_drain_on_a_batcher_never_started() -> None:
    b: Batcher[object] = Batcher(Recorder(), window_s=0.0)
    fut = b.submit_nowait(req("x"))
    await b.close()
    assert fut.result() == "x"


@pytest.mark.asyncio
async def test_close_without_drain_fails_queued_and_waits_for_in_flight() -> None:
    gate = asyncio.Event()
    rec = Recorder(gate=gate)
    b: Batcher[object] = Batcher(rec, window_s=0.0, max_concurrency=1, max_batch_size=1)
    futs = [b.submit_nowait(req(i)) for i in range(4)]
    await b.start()
    await rec.wait_until(lambda: b.in_flight == 1)
    closing = asyncio.ensure_future(b.close(drain=False))
    async with asyncio.timeout(GUARD_S):
        await asyncio.wait(futs[1:])
    await loop_turns()
    assert not closing.done()  # still waiting for the batch in the handler
    for fut in futs[1:]:
        with pytest.raises(BatcherClosedError, match="drain=False"):
            fut.result()
    gate.set()
    async with asyncio.timeout(GUARD_S):
        await closing
    assert futs[0].result() == 0
    assert len(rec.batches) == 1


@pytest.mark.asyncio
async def test_context_manager_exit_on_error_does_not_drain() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=60.0)
    futs: list[asyncio.Future[object]] = []

    async def fail_inside() -> None:
        async with b:
            futs.append(b.submit_nowait(req("x")))
            await asyncio.sleep(0)
            raise KeyError("caller failed")

    with pytest.raises(KeyError):
        await fail_inside()
    with pytest.raises(BatcherClosedError):
        futs[0].result()
    assert rec.batches == []


# -- batching window and composition -------------------------------------------------------


@pytest.mark.asyncio
async def test_requests_inside_the_window_share_a_batch() -> None:
    rec = Recorder()
    async with Batcher(rec, window_s=0.05) as b:
        first = b.submit_nowait(req("a"))
        await asyncio.sleep(0)  # the dispatcher now holds "a" as seed, inside its window
        second = b.submit_nowait(req("b", tokens=110))
        assert list(await asyncio.gather(first, second)) == ["a", "b"]
    assert rec.payloads() == [["a", "b"]]
    assert rec.batches[0].seed_prompt_tokens == 100


@pytest.mark.asyncio
async def test_zero_window_dispatches_at_once() -> None:
    """The same arrivals as in the test above, with no window: "a" leaves in the
    dispatcher's first turn, so "b" cannot join it."""
    rec = Recorder()
    async with Batcher(rec, window_s=0.0) as b:
        first = b.submit_nowait(req("a"))
        await asyncio.sleep(0)  # one turn of the dispatcher, no timer
        assert b.stats.batches_dispatched == 1
        second = b.submit_nowait(req("b", tokens=110))
        assert list(await asyncio.gather(first, second)) == ["a", "b"]
    assert rec.payloads() == [["a"], ["b"]]


@pytest.mark.asyncio
async def test_full_batch_does_not_wait_for_the_window() -> None:
    rec = Recorder()
    async with Batcher(rec, window_s=60.0, max_batch_size=2) as b:
        futs = [b.submit_nowait(req(i)) for i in range(2)]
        async with asyncio.timeout(GUARD_S):
            assert list(await asyncio.gather(*futs)) == [0, 1]
        await b.close(drain=False)
    assert rec.payloads() == [[0, 1]]


@pytest.mark.asyncio
async def test_composition_model_tolerance_priority_and_size() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0, max_batch_size=3, length_tolerance=0.2)
    specs = [
        ("s100", 100, "m", Priority.NORMAL),
        ("s120", 120, "m", Priority.NORMAL),  # exactly at +20%: joins
        ("s121", 121, "m", Priority.NORMAL),  # beyond +20% of the seed: does not
        ("other", 100, "x", Priority.NORMAL),  # another model
        ("high", 100, "m", Priority.HIGH),  # another priority
        ("s80", 80, "m", Priority.NORMAL),  # exactly at -20%: joins, but the batch is full
    ]
    futs = [b.submit_nowait(req(p, t, m, pr)) for p, t, m, pr in specs]
    await b.close()
    assert [f.result() for f in futs] == [s[0] for s in specs]
    assert rec.payloads() == [["high"], ["s100", "s120", "s80"], ["s121"], ["other"]]


@pytest.mark.asyncio
async def test_batches_never_exceed_max_size() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0, max_batch_size=8)
    futs = [b.submit_nowait(req(i)) for i in range(20)]
    await b.close()
    assert [len(batch.requests) for batch in rec.batches] == [8, 8, 4]
    assert [f.result() for f in futs] == list(range(20))


@pytest.mark.asyncio
async def test_higher_priority_is_dispatched_first() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0, max_concurrency=1)
    order = [Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.LOW, Priority.HIGH]
    for i, prio in enumerate(order):
        b.submit_nowait(req(i, tokens=100 * (i + 1), prio=prio))  # no two compatible
    await b.close()
    assert rec.payloads() == [[2], [4], [1], [0], [3]]
    assert [batch.priority for batch in rec.batches] == sorted(order, reverse=True)


@pytest.mark.asyncio
async def test_urgent_arrival_during_the_window_becomes_the_seed() -> None:
    rec = Recorder()
    async with Batcher(rec, window_s=0.05, max_concurrency=1) as b:
        low = b.submit_nowait(req("low", prio=Priority.LOW))
        await asyncio.sleep(0)  # "low" is the seed, waiting for its window
        high = b.submit_nowait(req("high", prio=Priority.HIGH))
        await asyncio.gather(low, high)
    assert rec.payloads() == [["high"], ["low"]]


@pytest.mark.asyncio
async def test_concurrency_limit_is_respected() -> None:
    rec = Recorder(delay_s=0.005)
    b: Batcher[object] = Batcher(rec, window_s=0.0, max_batch_size=1, max_concurrency=3)
    futs = [b.submit_nowait(req(i)) for i in range(12)]
    await b.start()
    await rec.wait_until(lambda: b.in_flight == 3)
    assert b.queued == 9
    await b.close()
    assert rec.max_current == 3
    assert [f.result() for f in futs] == list(range(12))


@pytest.mark.asyncio
async def test_many_cancellations_are_compacted_and_lose_nothing() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0, max_queue=5000, max_concurrency=1)
    futs = [b.submit_nowait(req(i)) for i in range(3000)]
    for fut in futs[10:]:
        fut.cancel()
    await asyncio.sleep(0)
    assert b.queued == 10
    await b.close()
    assert [f.result() for f in futs[:10]] == list(range(10))
    assert sum(len(batch.requests) for batch in rec.batches) == 10
    assert b.stats.requests_cancelled == 2990


@pytest.mark.asyncio
async def test_window_is_measured_on_the_injected_clock() -> None:
    now = [0.0]
    rec = Recorder()
    async with Batcher(rec, window_s=10.0, clock=lambda: now[0]) as b:
        first = b.submit_nowait(req("a"))
        await loop_turns()
        assert rec.batches == []  # 10 s of window left on the injected clock
        now[0] = 100.0  # the window has passed; the next arrival wakes the dispatcher
        second = b.submit_nowait(req("b"))
        async with asyncio.timeout(GUARD_S):
            assert list(await asyncio.gather(first, second)) == ["a", "b"]
    assert rec.payloads() == [["a", "b"]]


@pytest.mark.asyncio
async def test_zero_tolerance_batches_exact_lengths_only() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0, length_tolerance=0.0)
    for i, tokens in enumerate([100, 101, 100, 99, 100, 2**60 + 1, 2**60, 2**60 + 1]):
        b.submit_nowait(req(i, tokens=tokens))
    await b.close()
    assert rec.payloads() == [[0, 2, 4], [1], [3], [5, 7], [6]]


@pytest.mark.asyncio
async def test_wide_tolerance_spans_many_length_classes() -> None:
    rec = Recorder()
    b: Batcher[object] = Batcher(rec, window_s=0.0, length_tolerance=3.0, max_batch_size=8)
    for i, tokens in enumerate([1000, 1, 4000, 250, 4001, 10, 3999]):
        b.submit_nowait(req(i, tokens=tokens))
    await b.close()
    assert rec.payloads() == [[0, 1, 2, 3, 5, 6], [4]]
