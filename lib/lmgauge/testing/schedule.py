"""What the calibrated token server sends and when: schedules, faults and send records.

Pure data, no I/O. A request's tokens are due at absolute offsets from its arrival,
``ttft + k * itl + jitter_k``, the jitter drawn from a RNG seeded by (seed, request index)
so a run can be replayed; offsets never decrease, so a token is never due before the one
before it. The server stamps each chunk with ``time.perf_counter()`` once its bytes are
written, which on Linux is CLOCK_MONOTONIC: comparable across processes of one host.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Schedule:
    ttft_s: float = 0.050
    itl_s: float = 0.005
    jitter_s: float = 0.0  # each token moves by up to this much either way
    max_tokens: int | None = None  # caps what a request asks for (max_tokens / num_predict)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("ttft_s", "itl_s", "jitter_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < 3600:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens!r}")

    def tokens(self, asked: int | None) -> int:
        """How many tokens a request that asked for ``asked`` gets (None: the cap, else 16)."""
        if asked is None or asked < 0:
            return self.max_tokens if self.max_tokens is not None else 16
        return asked if self.max_tokens is None else min(asked, self.max_tokens)

    def offsets(self, index: int, tokens: int) -> list[float]:
        """Seconds after arrival at which each of ``tokens`` tokens of request ``index`` is due."""
        rng = random.Random(self.seed * 1_000_003 + index)
        due: list[float] = []
        last = 0.0
        for k in range(tokens):
            jitter = rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0
            last = max(last, self.ttft_s + k * self.itl_s + jitter)
            due.append(last)
        return due

    @classmethod
    def from_json(cls, data: dict[str, Any], base: Schedule | None = None) -> Schedule:
        """From ``{"ttft_ms", "itl_ms", "jitter_ms", "tokens", "seed"}``; absent keys: ``base``."""
        known = {"ttft_ms", "itl_ms", "jitter_ms", "tokens", "seed"}
        if unknown := set(data) - known:
            raise ValueError(f"unknown schedule keys {sorted(unknown)}; use {sorted(known)}")
        base = base or cls()
        changes: dict[str, Any] = {
            f"{key[:-3]}_s": float(data[key]) / 1000 for key in data if key.endswith("_ms")
        }
        if "tokens" in data:
            changes["max_tokens"] = None if data["tokens"] is None else int(data["tokens"])
        if "seed" in data:
            changes["seed"] = int(data["seed"])
        return dataclasses.replace(base, **changes)


@dataclass
class Fault:
    """Misbehaviour for the next ``count`` generation requests (control calls are spared).

    ``status``: answer that HTTP status with ``body`` instead of streaming. ``*_after``: after
    that many tokens, send a garbage line / close the socket / stop for ``stall_s`` seconds.
    """

    count: int = 1
    status: int | None = None
    body: str = "injected fault"
    malformed_after: int | None = None
    disconnect_after: int | None = None
    stall_after: int | None = None
    stall_s: float = 1.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(data) - names:
            raise ValueError(f"unknown fault keys {sorted(unknown)}; use {sorted(names)}")
        fault = cls(**data)
        if fault.status is not None and not 400 <= fault.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {fault.status}")
        return fault


@dataclass
class SendRecord:
    """One generation request as the server saw it; times are perf_counter() seconds."""

    id: str
    path: str
    model: str
    prompt: str
    received_s: float  # the whole request had been read
    due_s: list[float]  # absolute deadlines of the tokens
    sent_s: list[float] = field(default_factory=list)  # each token chunk, once written
    done_s: float | None = None  # the end of the response, once written
    # The same, stamped just before the write: the bytes cannot reach the client earlier,
    # while a stamp after it is late when the woken client preempts the server (2 cores).
    write_s: list[float] = field(default_factory=list)
    end_write_s: float | None = None
    finish_reason: str | None = None
    fault: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
