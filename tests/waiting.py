"""Waiting in tests for something to happen: poll a condition up to a deadline, never a fixed
sleep that hopes to have been long enough."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout_s: float = 5.0,
    *,
    what: str = "the condition",
    interval_s: float = 0.005,
) -> None:
    """Return as soon as ``predicate()`` (awaited if it is a coroutine) holds; fail the test
    if it still does not after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        await asyncio.sleep(interval_s)
