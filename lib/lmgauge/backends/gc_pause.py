"""Python's cyclic garbage collector held off while a stream is being timed.

A full collection walks every object of the process: in a pytest session that is 100,000+
objects and stopped the event loop for 73 ms (benchmarks/test_harness_fidelity.py), which
every open stream then reports as one slow token. Reference counting still frees nearly
everything a stream allocates (parsed events, chunks); the cycles it leaves wait for the
collection that runs once the last open stream has closed, between measurements.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_open = 0  # blocks open now, in this process
_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic collection while any ``gc_paused`` block is open; nests and overlaps."""
    global _open, _was_enabled
    with _lock:
        if _open == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if _open == 0 and _was_enabled:
                gc.enable()
