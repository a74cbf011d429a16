"""What the calibrated token server sends and when: schedules, faults and send records.

Pure data, no I/O. A request's tokens are due at absolute offsets from its arrival,
``ttft + k * itl + jitter_k``, the jitter drawn from a RNG seeded by (seed, request index)
so a run can be replayed; offsets never decrease, so a token is never due before the one
before it. All of a request's offsets are then multiplied by its ``factor``: ``slowdown``
(one server as an arm exactly that much slower), times a drift that swings over minutes as
run medians do on a noisy VM, ``1 + drift_amplitude * sin(2 pi (t - drift_epoch) /
drift_period_s + drift_phase)`` at its arrival ``t``, times a log-normal noise of median 1
(sd ``noise_sd`` in log space) seeded by (seed, request index). The drift is a pure function
of ``t``, so two server processes given one epoch drift together. The server stamps each
chunk with ``time.perf_counter()`` once its bytes are written, which on Linux is
CLOCK_MONOTONIC: comparable across processes of one host.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Schedule:
    ttft_s: float = 0.050
    itl_s: float = 0.005
    jitter_s: float = 0.0  # each token moves by up to this much either way
    max_tokens: int | None = None  # caps what a request asks for (max_tokens / num_predict)
    seed: int = 0
    slowdown: float = 1.0  # every timing multiplied by this (1.05: 5% slower)
    drift_amplitude: float = 0.0  # 0.2: the drift swings between 0.8x and 1.2x
    drift_period_s: float = 180.0
    drift_epoch: float | None = None  # a perf_counter() time; None: the server's start
    drift_phase: float = 0.0  # radians
    noise_sd: float = 0.0  # per request, the sd of the factor's logarithm

    def __post_init__(self) -> None:
        for name in ("ttft_s", "itl_s", "jitter_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value < 3600:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens!r}")
        checks: dict[str, tuple[Callable[[float], bool], str]] = {
            "slowdown": (lambda v: v > 0, "> 0"),
            "drift_amplitude": (lambda v: 0 <= v < 1, "in [0, 1)"),  # the factor stays > 0
            "drift_period_s": (lambda v: v > 0, "> 0"),
            "drift_phase": (lambda v: True, "(radians)"),
            "noise_sd": (lambda v: v >= 0, ">= 0"),
        }
        if self.drift_epoch is not None:
            checks["drift_epoch"] = (lambda v: True, "(a perf_counter() time) or None")
        for name, (ok, rule) in checks.items():
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not ok(value):
                raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")

    def drift(self, at_s: float) -> float:
        """The drift multiplier at perf_counter() time ``at_s`` (an unset epoch counts as 0)."""
        if not self.drift_amplitude:
            return 1.0
        angle = 2 * math.pi * (at_s - (self.drift_epoch or 0.0)) / self.drift_period_s
        return 1 + self.drift_amplitude * math.sin(angle + self.drift_phase)

    def noise(self, index: int) -> float:
        """Request ``index``'s noise multiplier: log-normal, median 1, replayable."""
        if not self.noise_sd:
            return 1.0
        # A stream of its own, so turning noise on leaves the jitter draws as they were.
        rng = random.Random(f"lmgauge-noise:{self.seed}:{index}")
        return math.exp(rng.gauss(0.0, self.noise_sd))

    def factor(self, index: int, at_s: float) -> float:
        """What request ``index``, arriving at ``at_s``, has all its timings multiplied by."""
        return self.slowdown * self.drift(at_s) * self.noise(index)

    def tokens(self, asked: int | None) -> int:
        """How many tokens a request that asked for ``asked`` gets (None: the cap, else 16)."""
        if asked is None or asked < 0:
            return self.max_tokens if self.max_tokens is not None else 16
        return asked if self.max_tokens is None else min(asked, self.max_tokens)

    def offsets(self, index: int, tokens: int, factor: float = 1.0) -> list[float]:
        """Seconds after arrival at which each of ``tokens`` tokens of request ``index`` is
        due, all multiplied by ``factor`` (the server passes ``factor(index, arrival)``)."""
        rng = random.Random(self.seed * 1_000_003 + index)
        due: list[float] = []
        last = 0.0
        for k in range(tokens):
            jitter = rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0
            last = max(last, self.ttft_s + k * self.itl_s + jitter)
            due.append(last)
        return due if factor == 1.0 else [offset * factor for offset in due]

    @classmethod
    def from_json(cls, data: dict[str, Any], base: Schedule | None = None) -> Schedule:
        """From ``{"ttft_ms", "itl_ms", "jitter_ms", "tokens", "seed"}`` and the factor's
        fields under their own names (``slowdown``, ``drift_*``, ``noise_sd``); absent keys:
        ``base``. ``"drift_epoch": null`` gives the epoch back to the server's start."""
        known = {"ttft_ms", "itl_ms", "jitter_ms", "tokens", "seed", *_FACTOR_FIELDS}
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
        for key in _FACTOR_FIELDS & set(data):
            value = data[key]
            changes[key] = None if value is None and key == "drift_epoch" else float(value)
        return dataclasses.replace(base, **changes)


_FACTOR_FIELDS = {
    "slowdown",
    "drift_amplitude",
    "drift_period_s",
    "drift_epoch",
    "drift_phase",
    "noise_sd",
}


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
    factor: float = 1.0  # what the schedule's offsets were multiplied by (Schedule.factor)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
