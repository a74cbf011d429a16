"""How far the suite's client path is from the token server's ground truth.

A burst goes through the same path as ``Runner.throughput``: the backend adapter,
``measure_one`` and a ``Batcher`` with one request per batch and one slot per request.
Each Sample is matched to the server's send record by its prompt, and compared:

- TTFT error: client TTFT - (first chunk sent - client start), i.e. how late the client
  saw the first token; dispatch: request fully received by the server - client start;
- ITL error, per token: client gap - server gap (its p99 is of the absolute error);
- E2E error: client E2E - (end of the response sent - client start);
- delivery lag, per token: client arrival - server send.

"Sent" is the server's stamp taken just before each write (``write_s``): the bytes cannot
reach the client earlier, and the send call costs ~10 us. Its stamp after the write and
drain (``sent_s``) is often later than the client's arrival stamp: on 2 cores the client,
woken by the bytes, preempts the server before it reads the clock (measured here: 50 us
median, 0.4 ms at worst, for one stream).

The client's start is stamped when ``measure_one`` calls ``generate`` (a few microseconds
after measure_one's own stamp). perf_counter is CLOCK_MONOTONIC on Linux, so the client's
and the server's stamps are on one clock.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import psutil

from lmgauge.backends.base import (
    Backend,
    BackendInfo,
    Chunk,
    GenerateRequest,
    LoadResult,
    LoadSettings,
    MemoryReport,
    ModelInfo,
)
from lmgauge.batcher import Batch, Batcher, BatchRequest
from lmgauge.measure import Sample, measure_one
from lmgauge.testing.schedule import SendRecord
from lmgauge.testing.serving import server_cpu_s


class StampedBackend:
    """A backend that notes when each request starts (by prompt); otherwise the backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.name = backend.name
        self.starts: dict[str, float] = {}

    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        self.starts[request.prompt] = time.perf_counter()
        return self.backend.generate(request)

    async def info(self) -> BackendInfo:
        return await self.backend.info()

    async def list_models(self) -> list[ModelInfo]:
        return await self.backend.list_models()

    async def load(self, model: str, settings: LoadSettings) -> LoadResult:
        return await self.backend.load(model, settings)

    async def unload(self, model: str) -> None:
        await self.backend.unload(model)

    async def memory(self) -> MemoryReport:
        return await self.backend.memory()

    async def aclose(self) -> None:
        await self.backend.aclose()


@dataclass(frozen=True)
class Burst:
    samples: list[Sample]
    starts: dict[str, float]  # prompt -> perf_counter() when the client started it
    prompts: list[str]
    cpu_s: float  # this process's CPU time during the burst
    elapsed_s: float


async def burst(backend: StampedBackend, requests: Sequence[GenerateRequest]) -> Burst:
    """All ``requests`` at once, through a Batcher as ``Runner.throughput`` sends them."""

    async def handle(batch: Batch) -> list[Sample]:
        payloads = [cast(GenerateRequest, r.payload) for r in batch.requests]
        return list(
            await asyncio.gather(*(measure_one(backend, p, concurrent=True) for p in payloads))
        )

    cpu, start = time.process_time(), time.perf_counter()
    async with Batcher(
        handle, max_batch_size=1, window_s=0.0, max_concurrency=len(requests)
    ) as batcher:
        samples = await asyncio.gather(
            *(batcher.submit(BatchRequest(r.model, 128, payload=r)) for r in requests)
        )
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    prompts = [r.prompt for r in requests]
    return Burst(list(samples), dict(backend.starts), prompts, cpu_s, elapsed)


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time so far: the whole machine's (busy), this process's and the token server's.

    Between two snapshots, what neither process used went to other jobs: when they took a
    large share of the machine, the run's timings say more about them than about the client.
    """

    wall_s: float
    machine_busy_s: float
    client_s: float
    server_s: float

    @classmethod
    def take(cls, url: str) -> CpuSnapshot:
        server = server_cpu_s(url)
        t = psutil.cpu_times()  # guest time is already in user time: not added
        busy = t.user + t.nice + t.system
        busy += sum(getattr(t, name, 0.0) for name in ("irq", "softirq", "steal"))
        return cls(time.perf_counter(), busy, time.process_time(), server)

    def others_share(self, before: CpuSnapshot) -> float:
        """The share of the machine (0..1) that other processes used since ``before``."""
        wall = (self.wall_s - before.wall_s) * (psutil.cpu_count() or 1)
        ours = (self.client_s - before.client_s) + (self.server_s - before.server_s)
        others = (self.machine_busy_s - before.machine_busy_s) - ours
        return max(0.0, others / wall) if wall > 0 else 0.0


def _ms(values: list[float], *, absolute: bool = False) -> tuple[float, float]:
    """(median, p99) in ms; the p99 of the absolute values where ``absolute``."""
    if not values:
        return (float("nan"), float("nan"))
    data = np.asarray(values) * 1e3
    p99 = np.percentile(np.abs(data) if absolute else data, 99)
    return (round(float(np.median(data)), 3), round(float(p99), 3))


@dataclass(frozen=True)
class Fidelity:
    concurrency: int
    requests: int
    tokens: int  # tokens matched with the server's record
    unmatched: int  # failed samples, or samples whose token count differs from the server's
    ttft_error_ms: tuple[float, float]  # (median, p99)
    itl_error_ms: tuple[float, float]  # (median, p99 of |error|)
    e2e_error_ms: tuple[float, float]
    dispatch_ms: tuple[float, float]
    lag_ms: tuple[float, float]
    ingest_tokens_per_s: float  # tokens received / (last arrival - first arrival), per burst
    sent_tokens_per_s: float  # the same, of the server's send times
    server_late_ms: tuple[float, float]  # sent - due: how well the server kept its schedule
    cpu_us_per_token: float
    others_cpu_share: float = float("nan")  # of the machine, taken by other processes
    errors: tuple[str, ...] = ()

    def row(self) -> dict[str, float | int]:
        """Flat figures, for pytest-benchmark's extra_info and baselines."""
        flat: dict[str, float | int] = {
            "concurrency": self.concurrency,
            "tokens": self.tokens,
            "unmatched": self.unmatched,
        }
        for name in ("ttft_error", "itl_error", "e2e_error", "dispatch", "lag", "server_late"):
            median, p99 = getattr(self, f"{name}_ms")
            flat[f"{name}_median_ms"], flat[f"{name}_p99_ms"] = median + 0.0, p99  # no -0.0
        flat["ingest_tokens_per_s"] = round(self.ingest_tokens_per_s)
        flat["sent_tokens_per_s"] = round(self.sent_tokens_per_s)
        flat["cpu_us_per_token"] = round(self.cpu_us_per_token, 2)
        flat["others_cpu_share"] = round(self.others_cpu_share, 3)
        return flat


def _rate(times: list[float]) -> float:
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0


def compare(
    bursts: Sequence[Burst], records: Sequence[SendRecord], others_cpu_share: float = float("nan")
) -> Fidelity:
    """Match each burst's samples to the server's records (by prompt) and measure the errors."""
    by_prompt = {r.prompt: r for r in records}
    ttft: list[float] = []
    itl: list[float] = []
    e2e: list[float] = []
    dispatch: list[float] = []
    lag: list[float] = []
    late: list[float] = []
    ingest: list[float] = []
    sent_rates: list[float] = []
    errors: list[str] = []
    unmatched = tokens = 0
    for one in bursts:
        arrived: list[float] = []
        sent_all: list[float] = []
        for prompt, sample in zip(one.prompts, one.samples, strict=True):
            record, start = by_prompt.get(prompt), one.starts.get(prompt)
            if record is None or start is None or not sample.ok or sample.ttft_s is None:
                unmatched += 1
                errors.append(sample.error or f"no server record of {prompt[:40]!r}")
                continue
            sent, done = record.write_s, record.end_write_s
            if sample.output_tokens != len(sent) or done is None or not sent:
                unmatched += 1
                errors.append(f"{sample.output_tokens} tokens seen, {len(sent)} sent")
                continue
            times = list(itertools.accumulate(sample.itl_s, initial=start + sample.ttft_s))
            ttft.append(times[0] - sent[0])  # = client ttft - (sent[0] - start)
            itl.extend(c - s for c, s in zip(sample.itl_s, np.diff(sent), strict=True))
            if sample.e2e_s is not None:
                e2e.append(sample.e2e_s - (done - start))
            dispatch.append(record.received_s - start)
            lag.extend(c - s for c, s in zip(times, sent, strict=True))
            late.extend(s - d for s, d in zip(sent, record.due_s, strict=True))
            arrived.extend(times)
            sent_all.extend(sent)
            tokens += len(sent)
        ingest.append(_rate(arrived))
        sent_rates.append(_rate(sent_all))
    cpu_s = sum(b.cpu_s for b in bursts)
    return Fidelity(
        concurrency=max(len(b.samples) for b in bursts),
        requests=sum(len(b.samples) for b in bursts),
        tokens=tokens,
        unmatched=unmatched,
        ttft_error_ms=_ms(ttft),
        itl_error_ms=_ms(itl, absolute=True),
        e2e_error_ms=_ms(e2e),
        dispatch_ms=_ms(dispatch),
        lag_ms=_ms(lag),
        ingest_tokens_per_s=float(np.median(ingest)),
        sent_tokens_per_s=float(np.median(sent_rates)),
        server_late_ms=_ms(late),
        cpu_us_per_token=cpu_s / tokens * 1e6 if tokens else float("nan"),
        others_cpu_share=others_cpu_share,
        errors=tuple(errors[:5]),
    )
