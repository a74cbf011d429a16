"""Scheduling overhead of lmgauge.batcher with 10,000 requests queued.

The handler is trivial and the window 0, so the time is the batcher's own (plus asyncio's
futures and tasks). Nothing is asserted about time, machines are noisy: the per-request
figure goes to ``extra_info["per_request_us"]``; only correctness is asserted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from lmgauge.batcher import Batch, Batcher, BatchRequest, Priority

N = 10_000
MODELS = ("qwen3-1.7b", "qwen3-8b", "qwen3-14b")


def _requests(seed: int, *, mixed: bool) -> list[BatchRequest]:
    rng = random.Random(seed)
    if not mixed:
        return [BatchRequest(MODELS[0], 512, Priority.NORMAL, payload=i) for i in range(N)]
    return [
        BatchRequest(rng.choice(MODELS), rng.randint(1, 4000), rng.choice(list(Priority)), i)
        for i in range(N)
    ]


async def _echo(batch: Batch) -> Sequence[object]:
    return [r.payload for r in batch.requests]


async def _drain_all(
    requests: list[BatchRequest], tolerance: float
) -> tuple[float, list[object], int]:
    batcher: Batcher[object] = Batcher(_echo, window_s=0.0, max_queue=N, length_tolerance=tolerance)
    started = time.perf_counter()
    futures = [batcher.submit_nowait(r) for r in requests]  # all 10,000 queued first
    await batcher.start()
    await batcher.close(drain=True)
    elapsed = time.perf_counter() - started
    return elapsed, [f.result() for f in futures], batcher.stats.batches_dispatched


@pytest.mark.parametrize(
    ("mixed", "tolerance"),
    [(False, 0.2), (True, 0.2), (True, 0.0)],
    ids=["uniform", "mixed", "mixed-exact-length"],
)
def test_scheduling_overhead_per_request(
    benchmark: BenchmarkFixture, mixed: bool, tolerance: float
) -> None:
    """uniform: one model, one length; mixed: 3 models, 3 priorities, 1..4000 tokens.

    mixed-exact-length (tolerance 0) would cost O(queue) per batch with a scan of one deque
    per (priority, model); the length classes keep it as cheap as the others.
    """
    requests = _requests(0, mixed=mixed)
    elapsed: list[float] = []
    failures: list[str] = []

    def one_round() -> None:
        seconds, results, batches = asyncio.run(_drain_all(requests, tolerance))
        elapsed.append(seconds)
        if results != list(range(N)) or not N // 8 <= batches <= N:
            failures.append(f"{len(results)} results, {batches} batches")

    benchmark.pedantic(one_round, rounds=5, iterations=1, warmup_rounds=1)  # type: ignore[no-untyped-call]
    timed = sorted(elapsed[1:])  # the warmup round is not reported
    median_us = timed[len(timed) // 2] / N * 1e6
    benchmark.extra_info["per_request_us"] = round(median_us, 2)
    assert len(elapsed) == 6
    assert failures == []
