"""Hypothesis properties of lmgauge.batcher: the scheduling rules of its module docstring.

Each example runs in its own event loop (``asyncio.run`` inside a sync test) because
Hypothesis and async fixtures do not mix. Windows and handler delays stay at 0-2 ms so the
200 examples of each property finish in a few seconds.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgauge.batcher import Batch, Batcher, BatchRequest, Priority
from lmgauge.errors import BatcherClosedError, QueueFullError

MODELS = ("qwen3-1.7b", "qwen3-8b", "qwen3-14b")
EXAMPLES = settings(max_examples=200, deadline=None)
TOLERANCES = [0.0, 0.0005, 0.1, 0.2, 0.2, 0.5, 1.0, 3.0]


@dataclass(frozen=True)
class Arrival:
    model: str
    tokens: int
    priority: Priority
    pause: float | None  # before submitting: None none, 0.0 one loop turn, > 0 a sleep


@dataclass(frozen=True)
class Config:
    max_batch_size: int
    max_concurrency: int
    window_s: float
    length_tolerance: float
    handler_sleep: float | None  # None: answer without awaiting
    start_first: bool


@dataclass
class Run:
    config: Config
    arrivals: list[Arrival]
    batches: list[Batch] = field(default_factory=list)
    futures: list[asyncio.Future[object]] = field(default_factory=list)
    loop_errors: list[dict[str, Any]] = field(default_factory=list)
    stats_dispatched: int = 0
    stats_batches: int = 0

    def dispatch_index(self) -> dict[int, int]:
        """payload -> sequence of the batch that carried it; asserts it was carried once."""
        where: dict[int, int] = {}
        for batch in self.batches:
            for r in batch.requests:
                assert isinstance(r.payload, int)
                assert r.payload not in where, f"request {r.payload} dispatched twice"
                where[r.payload] = batch.sequence
        return where


class Boom(Exception):
    pass


arrivals_st = st.lists(
    st.builds(
        Arrival,
        model=st.sampled_from(MODELS),
        # mostly near 100 tokens so that batches form, else anywhere in 1..4000
        tokens=st.one_of(st.integers(80, 125), st.integers(1, 4000)),
        priority=st.sampled_from(Priority),
        pause=st.sampled_from([None, None, None, 0.0, 0.0005]),
    ),
    min_size=1,
    max_size=30,
)
config_st = st.builds(
    Config,
    max_batch_size=st.integers(1, 8),
    max_concurrency=st.integers(1, 4),
    window_s=st.sampled_from([0.0, 0.0, 0.001, 0.002]),
    length_tolerance=st.sampled_from(TOLERANCES),
    handler_sleep=st.sampled_from([None, 0.0, 0.0005]),
    start_first=st.booleans(),
)


async def _scenario(
    run: Run,
    *,
    failing: frozenset[int] = frozenset(),
    cancel_queued: frozenset[int] = frozenset(),
    cancel_in_flight: frozenset[int] = frozenset(),
    drain: bool = True,
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: run.loop_errors.append(context))
    cfg = run.config

    async def handler(batch: Batch) -> Sequence[object]:
        run.batches.append(batch)
        if cfg.handler_sleep is not None:
            await asyncio.sleep(cfg.handler_sleep)
        for r in batch.requests:
            if isinstance(r.payload, int) and r.payload in cancel_in_flight:
                run.futures[r.payload].cancel()
        if batch.sequence in failing:
            raise Boom(batch.sequence)
        return [("ok", r.payload) for r in batch.requests]

    batcher: Batcher[object] = Batcher(
        handler,
        max_batch_size=cfg.max_batch_size,
        max_concurrency=cfg.max_concurrency,
        window_s=cfg.window_s,
        length_tolerance=cfg.length_tolerance,
        max_queue=len(run.arrivals),
    )
    if cfg.start_first:
        await batcher.start()
    for i, a in enumerate(run.arrivals):
        if a.pause is not None:
            await asyncio.sleep(a.pause)
        fut = batcher.submit_nowait(BatchRequest(a.model, a.tokens, a.priority, payload=i))
        run.futures.append(fut)
        if i in cancel_queued:
            fut.cancel()  # submit_nowait never dispatches synchronously: it is queued
    await batcher.close(drain=drain)
    assert batcher.queued == 0
    assert batcher.in_flight == 0
    run.stats_dispatched = batcher.stats.requests_dispatched
    run.stats_batches = batcher.stats.batches_dispatched
    gc.collect(0)  # surface any "exception was never retrieved" report now (young: cheap)


# -- (a) every request completes exactly once ---------------------------------------------


@EXAMPLES
@given(
    config=config_st,
    arrivals=arrivals_st,
    failing=st.frozensets(st.integers(0, 30), max_size=10),
    cancel_queued=st.frozensets(st.integers(0, 29), max_size=5),
    cancel_in_flight=st.frozensets(st.integers(0, 29), max_size=5),
    drain=st.booleans(),
)
def test_every_request_gets_exactly_one_outcome(
    config: Config,
    arrivals: list[Arrival],
    failing: frozenset[int],
    cancel_queued: frozenset[int],
    cancel_in_flight: frozenset[int],
    drain: bool,
) -> None:
    run = Run(config, arrivals)
    asyncio.run(
        _scenario(
            run,
            failing=failing,
            cancel_queued=cancel_queued,
            cancel_in_flight=cancel_in_flight,
            drain=drain,
        )
    )
    assert run.loop_errors == []
    where = run.dispatch_index()
    assert run.stats_dispatched == len(where)
    assert run.stats_batches == len(run.batches)
    for i, fut in enumerate(run.futures):
        assert fut.done(), f"request {i} has no outcome"
        if i in cancel_queued:
            assert fut.cancelled()
            assert i not in where, f"request {i} was cancelled while queued yet dispatched"
        elif i not in where:
            assert not drain, f"request {i} was never dispatched although close() drained"
            with pytest.raises(BatcherClosedError):
                fut.result()
        elif i in cancel_in_flight:
            assert fut.cancelled()
        elif where[i] in failing:
            exc = fut.exception()
            assert isinstance(exc, Boom)
            assert exc.args == (where[i],)
        else:
            assert fut.result() == ("ok", i)


# -- (b) batch composition ----------------------------------------------------------------


@EXAMPLES
@given(config=config_st, arrivals=arrivals_st)
def test_batches_hold_one_model_one_priority_and_compatible_lengths(
    config: Config, arrivals: list[Arrival]
) -> None:
    run = Run(config, arrivals)
    asyncio.run(_scenario(run))
    assert run.loop_errors == []
    assert [b.sequence for b in run.batches] == list(range(len(run.batches)))
    assert sorted(run.dispatch_index()) == list(range(len(arrivals)))
    tol = config.length_tolerance
    for batch in run.batches:
        assert 1 <= len(batch.requests) <= config.max_batch_size
        seed = batch.requests[0]
        assert batch.seed_prompt_tokens == seed.prompt_tokens
        for r in batch.requests:
            assert r.model == batch.model
            assert r.priority == seed.priority
            assert abs(r.prompt_tokens - seed.prompt_tokens) <= tol * seed.prompt_tokens
        payloads = [r.payload for r in batch.requests if isinstance(r.payload, int)]
        assert payloads == sorted(payloads)  # members in arrival order
        assert len(payloads) == len(batch.requests)


# -- (c) priority is never inverted --------------------------------------------------------


@EXAMPLES
@given(config=config_st, arrivals=arrivals_st)
def test_no_request_is_dispatched_after_a_later_lower_priority_one(
    config: Config, arrivals: list[Arrival]
) -> None:
    run = Run(config, arrivals)
    asyncio.run(_scenario(run))
    assert run.loop_errors == []
    where = run.dispatch_index()
    for early in range(len(arrivals)):
        for late in range(early + 1, len(arrivals)):
            if arrivals[early].priority > arrivals[late].priority:
                assert where[early] <= where[late], (
                    f"request {early} ({arrivals[early].priority.name}) dispatched in batch "
                    f"{where[early]}, after request {late} ({arrivals[late].priority.name}, "
                    f"arrived later) in batch {where[late]}"
                )


# -- (d) a full queue rejects at once and loses nothing ------------------------------------


@EXAMPLES
@given(
    max_queue=st.integers(1, 20),
    max_concurrency=st.integers(1, 4),
    max_batch_size=st.integers(1, 8),
    started=st.booleans(),
    extra=st.integers(1, 5),
    yields=st.lists(st.booleans(), min_size=30, max_size=30),
    priorities=st.lists(st.sampled_from(Priority), min_size=30, max_size=30),
)
def test_full_queue_rejects_immediately_and_keeps_what_it_holds(
    max_queue: int,
    max_concurrency: int,
    max_batch_size: int,
    started: bool,
    extra: int,
    yields: list[bool],
    priorities: list[Priority],
) -> None:
    async def scenario() -> None:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: errors.append(ctx))
        gate = asyncio.Event()
        seen: list[int] = []

        async def handler(batch: Batch) -> Sequence[object]:
            seen.extend(r.payload for r in batch.requests)  # type: ignore[misc]
            await gate.wait()
            return [r.payload for r in batch.requests]

        batcher: Batcher[object] = Batcher(
            handler,
            max_queue=max_queue,
            max_concurrency=max_concurrency,
            max_batch_size=max_batch_size,
            window_s=0.0,
        )
        if started:
            await batcher.start()
        accepted: list[asyncio.Future[object]] = []
        rejected = 0
        i = 0
        while rejected < extra:  # in-flight requests free queue places, so loop until full
            request = BatchRequest("m", 100, priorities[i % 30], payload=len(accepted))
            queued_before, in_flight_before = batcher.queued, batcher.in_flight
            if queued_before == max_queue:
                with pytest.raises(QueueFullError, match="full"):
                    batcher.submit_nowait(request)  # raises synchronously: no await here
                coro = batcher.submit(request)
                with pytest.raises(QueueFullError):
                    coro.send(None)  # the coroutine raises at its first step, never waits
                rejected += 2
                assert (batcher.queued, batcher.in_flight) == (queued_before, in_flight_before)
            else:
                accepted.append(batcher.submit_nowait(request))
            i += 1
            if yields[i % 30]:
                await asyncio.sleep(0)
        assert batcher.stats.requests_rejected == rejected
        assert not any(f.done() for f in accepted)
        gate.set()
        await batcher.close(drain=True)
        assert [f.result() for f in accepted] == list(range(len(accepted)))
        assert sorted(seen) == list(range(len(accepted)))
        gc.collect(0)
        assert errors == []

    asyncio.run(scenario())


# -- (e) batch formation matches a brute-force reference -----------------------------------


def _reference_batches(
    arrivals: list[Arrival], max_batch_size: int, tolerance: float
) -> list[list[int]]:
    """The rules of the module docstring, applied by O(n^2) scans of a plain list."""
    waiting = list(range(len(arrivals)))
    batches: list[list[int]] = []
    while waiting:
        seed = max(waiting, key=lambda i: (arrivals[i].priority, -i))
        s = arrivals[seed]
        members = [
            i
            for i in waiting
            if arrivals[i].model == s.model
            and arrivals[i].priority == s.priority
            and abs(arrivals[i].tokens - s.tokens) <= tolerance * s.tokens
        ][:max_batch_size]
        batches.append(members)
        waiting = [i for i in waiting if i not in members]
    return batches


@EXAMPLES
@given(
    arrivals=arrivals_st,
    max_batch_size=st.integers(1, 8),
    max_concurrency=st.integers(1, 4),
    tolerance=st.sampled_from(TOLERANCES),
)
def test_batches_queued_up_front_match_the_reference(
    arrivals: list[Arrival], max_batch_size: int, max_concurrency: int, tolerance: float
) -> None:
    """With everything queued before start() there is no timing left: batching is exact."""
    config = Config(max_batch_size, max_concurrency, 0.0, tolerance, 0.0, start_first=False)
    plain = [Arrival(a.model, a.tokens, a.priority, None) for a in arrivals]
    run = Run(config, plain)
    asyncio.run(_scenario(run))
    got = [[r.payload for r in b.requests] for b in run.batches]
    assert got == _reference_batches(plain, max_batch_size, tolerance)
