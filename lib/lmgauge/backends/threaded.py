"""Streaming from an engine that runs in a worker thread, into the event loop.

In-process engines (llama.cpp, mlx-lm) generate in one long-lived worker thread; each
Chunk is timestamped there, the moment its token exists, and handed to the event loop
through a queue. An error in the thread is raised in the loop, translated; a token that
does not come within the timeout is a BackendTimeoutError; leaving early stops the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from lmgauge.backends.base import Chunk
from lmgauge.errors import BackendTimeoutError


async def stream_from_thread(
    submit: Callable[[Callable[[], None]], Awaitable[None]],
    produce: Callable[[threading.Event], Iterator[Chunk]],
    *,
    timeout_s: float,
    engine: str,
    translate: Callable[[BaseException], BaseException],
) -> AsyncIterator[Chunk]:
    """Run ``produce(stop)`` through ``submit`` (the engine's worker) and yield its Chunks."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()
    stop = threading.Event()

    def put(item: Chunk | BaseException | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            for chunk in produce(stop):
                put(chunk)
            put(None)
        except BaseException as exc:  # handed to the event loop, raised there
            put(exc)

    done = submit(work)
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout_s)
            except TimeoutError:
                raise BackendTimeoutError(
                    f"{engine} produced no token within {timeout_s} s; raise the request "
                    "timeout or use a smaller model"
                ) from None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise translate(item) from item
            yield item
    finally:
        stop.set()
        await done
