"""The worker-thread to event-loop bridge shared by the in-process engines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from lmgauge.backends.base import Chunk
from lmgauge.backends.threaded import stream_from_thread
from lmgauge.errors import BackendError, BackendTimeoutError


def _submit(pool: ThreadPoolExecutor) -> Callable[[Callable[[], None]], asyncio.Future[None]]:
    loop = asyncio.get_running_loop()
    return lambda work: loop.run_in_executor(pool, work)


async def _collect(
    produce: Callable[[threading.Event], Iterator[Chunk]], timeout_s: float = 1.0
) -> list[Chunk]:
    with ThreadPoolExecutor(1) as pool:
        stream = stream_from_thread(
            _submit(pool),
            produce,
            timeout_s=timeout_s,
            engine="test",
            translate=lambda e: BackendError(f"translated: {e}"),
        )
        return [chunk async for chunk in stream]


@pytest.mark.asyncio
async def test_chunks_arrive_with_the_thread_timestamps() -> None:
    def produce(_stop: threading.Event) -> Iterator[Chunk]:
        for i in range(3):
            yield Chunk(str(i), 1, time.perf_counter())

    chunks = await _collect(produce)
    assert [c.text for c in chunks] == ["0", "1", "2"]
    assert chunks[0].at_s < chunks[1].at_s < chunks[2].at_s


@pytest.mark.asyncio
async def test_an_error_in_the_thread_is_raised_translated() -> None:
    def produce(_stop: threading.Event) -> Iterator[Chunk]:
        yield Chunk("a", 1, time.perf_counter())
        raise RuntimeError("decode failed")

    with pytest.raises(BackendError, match="translated: decode failed"):
        await _collect(produce)


@pytest.mark.asyncio
async def test_a_stalled_engine_times_out_and_is_told_to_stop() -> None:
    stopped = threading.Event()

    def produce(stop: threading.Event) -> Iterator[Chunk]:
        stop.wait(5)  # a stalled decode that checks the stop flag
        stopped.set()
        yield from ()

    with pytest.raises(BackendTimeoutError, match=r"test produced no token within 0\.1 s"):
        await _collect(produce, timeout_s=0.1)
    assert stopped.is_set()
