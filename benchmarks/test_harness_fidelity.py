"""Harness fidelity: does the suite's own client path measure what the server sent?

A calibrated token server (lmgauge.testing.token_server, in its own process) streams tokens
on a known schedule and records when each chunk was written; the suite's client path
(backend adapter + lmgauge.measure + lmgauge.batcher, as Runner.throughput drives it) measures
the same requests. The errors of client-measured TTFT, ITL and E2E against the server's
send times (median, p99 in ms), the ingest rate and the client's CPU time per token go to
``benchmark.extra_info`` and a table printed at the end of the module.

Targets, reported not asserted: TTFT/ITL error p99 <= 1 ms at 32 streams; >= 20,000 tokens/s
ingested at 64 streams. The gate is the stored harness baseline
(baselines/harness/<profile>.json): a figure fails only when it is more than 3x worse than
the baseline AND worse than the target, so a noisy machine does not fail a run; a run
during which other jobs took over a quarter of the CPU is reported but not gated. Write the
baseline with ``--lmgauge-update-baselines``. The capacity sweep is marked ``heavy``.

    pytest benchmarks/test_harness_fidelity.py -m "not heavy"   # levels and 20k/s: ~25 s
    pytest benchmarks/test_harness_fidelity.py                   # and the sweep: ~75 s
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from lmgauge.backends.base import Backend, GenerateRequest
from lmgauge.backends.ollama import OllamaBackend
from lmgauge.backends.openai import OpenAIBackend
from lmgauge.hardware import fingerprint
from lmgauge.measure import measure_one
from lmgauge.testing import control, records, serve_in_process
from lmgauge.testing.fidelity import (
    Burst,
    CpuSnapshot,
    Fidelity,
    StampedBackend,
    burst,
    compare,
)

LEVELS = {1: 8, 8: 4, 32: 2, 64: 2}  # concurrency -> bursts (enough tokens for a p99)
TTFT_MS, ITL_MS, TOKENS = 50.0, 5.0, 64  # jitter: ITL / 5 everywhere
SWEEP_ITL_MS = (8.0, 5.0, 4.0, 3.2, 2.5, 2.0, 1.6, 1.3, 1.0)  # 64 streams: 8k-64k tokens/s
SWEEP_TOKENS, SWEEP_BURSTS = 256, 3
BUSY_SHARE = 0.25  # other jobs took more of the machine than this: the run is not gated
TARGET_ITL_MS = 3.2  # 64 streams at 20,000 tokens/s: the ingest target, checked in CI
STORED = (  # the figures a baseline keeps
    *(
        f"{m}_{q}_ms"
        for m in ("ttft_error", "itl_error", "e2e_error", "dispatch")
        for q in ("median", "p99")
    ),
    "ingest_tokens_per_s",
    "cpu_us_per_token",
    "sustained_tokens_per_s",
    "max_ingest_tokens_per_s",
)
ERROR_TARGET_MS = 1.0
INGEST_TARGET = 20_000.0
WORSE_FACTOR = 3.0
BASELINE_FORMAT, BASELINE_VERSION = "lmgauge-harness-baseline", 1
BASELINES = Path(__file__).resolve().parent.parent / "baselines" / "harness"

_figures: dict[str, dict[str, Any]] = {}


def _environment() -> dict[str, Any]:
    """What must match before two runs' figures are compared."""
    return {
        "profile": fingerprint().profile,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "implementation": platform.python_implementation(),
        "event_loop": "asyncio",
    }


def _baseline_path() -> Path:
    return BASELINES / f"{fingerprint().profile}.json"


def _load_baseline() -> dict[str, Any] | None:
    path = _baseline_path()
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("format") != BASELINE_FORMAT or data.get("version") != BASELINE_VERSION:
        raise ValueError(f"{path}: not a {BASELINE_FORMAT} v{BASELINE_VERSION} file")
    return data


def _server_args(itl_ms: float, tokens: int | None = None) -> list[str]:
    """The token server's command line: TTFT_MS, ``itl_ms`` with a fifth of it as jitter."""
    args = ["--ttft-ms", str(TTFT_MS), "--itl-ms", str(itl_ms), "--jitter-ms", str(itl_ms / 5)]
    return [*args, "--seed", "1", *(["--tokens", str(tokens)] if tokens else [])]


def _backend(protocol: str, url: str) -> Backend:
    return OpenAIBackend(url) if protocol == "openai" else OllamaBackend(url)


def _measure(url: str, protocol: str, concurrency: int, bursts: int, tokens: int) -> Fidelity:
    """Warm up with one request, then ``bursts`` bursts of ``concurrency`` requests."""
    model = "qwen3:0.6b"
    results: list[Burst] = []
    with asyncio.Runner() as runner:
        backend = StampedBackend(_backend(protocol, url))
        warm = GenerateRequest(model, "warm-up", max_tokens=4, timeout_s=60)
        runner.run(measure_one(backend, warm))
        control(url, "reset")
        before = CpuSnapshot.take(url)
        for k in range(bursts):
            requests = [
                GenerateRequest(model, f"fidelity c{concurrency} b{k} r{i}", tokens, timeout_s=60)
                for i in range(concurrency)
            ]
            results.append(runner.run(burst(backend, requests)))
        others = CpuSnapshot.take(url).others_share(before)
        runner.run(backend.aclose())
    return compare(results, records(url), others)


def _gate(key: str, row: dict[str, Any], metrics: tuple[str, ...]) -> list[str]:
    """Figures more than 3x worse than the baseline's and worse than the target."""
    baseline = _load_baseline()
    if baseline is None or baseline.get("environment") != _environment():
        row["gated"] = "no baseline of this environment"
        return []
    if row.get("others_cpu_share", 0.0) > BUSY_SHARE:
        row["gated"] = f"other jobs took {row['others_cpu_share']:.0%} of the CPU"
        return []
    row["gated"] = "yes"
    old = baseline.get("figures", {}).get(key, {})
    failures = []
    for metric in metrics:
        value, base = row.get(metric), old.get(metric)
        if value is None or base is None:
            continue
        if metric.endswith("_tokens_per_s"):
            if value < base / WORSE_FACTOR and value < INGEST_TARGET:
                failures.append(f"{key} {metric}: {value:.0f}, baseline {base:.0f}")
        elif value > WORSE_FACTOR * base and value > ERROR_TARGET_MS:
            failures.append(f"{key} {metric}: {value:.3f} ms, baseline {base:.3f} ms")
    return failures


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the table at the end of the module; write the baseline when asked to."""
    yield
    if not _figures:
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [
        f"harness fidelity ({fingerprint().profile}, load {os.getloadavg()[0]:.2f}), "
        f"errors in ms, against {_baseline_path()}:"
    ]
    head = "case                TTFT err med/p99  ITL err med/p99  E2E err med/p99"
    lines.append(head + "  dispatch p99  ingest tok/s  CPU us/tok  others  gated")
    for key, row in sorted(_figures.items()):
        if "steps" in row:
            lines.append(
                f"{key:<19} sustained {row['sustained_tokens_per_s']:.0f} tokens/s (ITL p99 <= "
                f"{ERROR_TARGET_MS} ms), most ingested {row['max_ingest_tokens_per_s']:.0f}, "
                f"gated: {row.get('gated', '')}"
            )
            lines.extend(
                f"    ITL {s['itl_ms']:4.1f} ms: sent {s['sent_tokens_per_s']:6.0f}/s, ingested "
                f"{s['ingest_tokens_per_s']:6.0f}/s, ITL err p99 {s['itl_error_p99_ms']:7.3f} ms, "
                f"lag p99 {s['lag_p99_ms']:7.3f} ms, {s['cpu_us_per_token']:5.1f} us/token, "
                f"others {s['others_cpu_share']:4.0%}{'' if s['passed'] else '  (fails)'}"
                for s in row["steps"]
            )
            continue
        cells = [
            f"{row[f'{m}_median_ms']:7.3f}/{row[f'{m}_p99_ms']:<7.3f}"
            for m in ("ttft_error", "itl_error", "e2e_error")
        ]
        lines.append(
            f"{key:<19} {cells[0]}  {cells[1]}  {cells[2]}  {row['dispatch_p99_ms']:10.3f}"
            f"  {row['ingest_tokens_per_s']:12.0f}  {row['cpu_us_per_token']:10.1f}"
            f"  {row['others_cpu_share']:6.0%}  {row.get('gated', '')}"
        )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
        if request.config.getoption("--lmgauge-update-baselines", default=False):
            _write_baseline(reporter)


def _write_baseline(reporter: Any) -> None:
    """Store this run's figures, but not those measured while other jobs took the CPU."""
    old = _load_baseline() or {}
    kept, busy = {}, []
    for key, row in _figures.items():
        if row.get("others_cpu_share", 0.0) > BUSY_SHARE:
            busy.append(key)
        else:
            kept[key] = {m: v for m, v in row.items() if m in STORED}
    data = {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "environment": _environment(),
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "figures": dict(sorted({**old.get("figures", {}), **kept}.items())),
    }
    BASELINES.mkdir(parents=True, exist_ok=True)
    _baseline_path().write_text(json.dumps(data, indent=1) + "\n")
    if reporter is not None:
        note = f"; not stored, other jobs were busy: {', '.join(busy)}" if busy else ""
        reporter.write_line(f"baseline written: {_baseline_path()}{note}")


def _benchmarked(
    benchmark: BenchmarkFixture,
    key: str,
    server_args: list[str],
    protocol: str,
    streams: int,
    rounds: int,
    tokens: int,
) -> tuple[Fidelity, dict[str, float | int]]:
    """One burst through pytest-benchmark, its figures in ``extra_info`` and the table."""
    found: list[Fidelity] = []
    with serve_in_process(*server_args) as url:

        def run() -> None:
            found.append(_measure(url, protocol, streams, rounds, tokens))

        benchmark.pedantic(run, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    fidelity = found[0]
    row = fidelity.row()
    benchmark.extra_info.update(row)
    _figures[key] = row
    assert fidelity.unmatched == 0, fidelity.errors
    return fidelity, row


def _confirmed(
    key: str,
    row: dict[str, Any],
    metrics: tuple[str, ...],
    server_args: list[str],
    protocol: str,
    streams: int,
    rounds: int,
    tokens: int,
) -> list[str]:
    """The gate's failures, confirmed by one more burst: on a shared VM one burst in a few
    catches a stall of the machine, not of the client (seen: ITL p99 1.3 ms once in 4
    runs at 20k tokens/s). A regression of the client fails both."""
    failures = _gate(key, row, metrics)
    if not failures:
        return []
    with serve_in_process(*server_args) as url:
        again = _measure(url, protocol, streams, rounds, tokens).row()
    _figures[f"{key}-retry"] = again
    return failures if _gate(key, again, metrics) else []


@pytest.mark.parametrize("concurrency", list(LEVELS))
@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_client_fidelity(benchmark: BenchmarkFixture, protocol: str, concurrency: int) -> None:
    """TTFT, ITL and E2E error at 1, 8, 32 and 64 concurrent streams (5 ms ITL)."""
    key = f"{protocol}-c{concurrency}"
    burst = (_server_args(ITL_MS), protocol, concurrency, LEVELS[concurrency], TOKENS)
    fidelity, row = _benchmarked(benchmark, key, *burst)
    assert fidelity.tokens == concurrency * LEVELS[concurrency] * TOKENS
    metrics = ("ttft_error_p99_ms", "itl_error_p99_ms")  # E2E: reported, not gated
    assert _confirmed(key, row, metrics, *burst) == []


@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_client_ingest_at_the_target_rate(benchmark: BenchmarkFixture, protocol: str) -> None:
    """64 streams of 256 tokens at 20,000 tokens/s offered: the quick capacity gate."""
    key = f"{protocol}-c64-20k"
    burst = (_server_args(TARGET_ITL_MS, SWEEP_TOKENS), protocol, 64, 1, SWEEP_TOKENS)
    _, row = _benchmarked(benchmark, key, *burst)
    metrics = ("itl_error_p99_ms", "ingest_tokens_per_s")
    assert _confirmed(key, row, metrics, *burst) == []


@pytest.mark.heavy
@pytest.mark.parametrize("protocol", ["openai", "ollama"])
def test_client_capacity(benchmark: BenchmarkFixture, protocol: str) -> None:
    """64 streams at a rising token rate, 3 bursts a step: the highest rate the client
    ingests, keeping up with the server (>= 95% of its send rate), before its ITL error p99
    first goes past 1 ms. The sweep goes on until two steps in a row fail."""
    steps: list[dict[str, Any]] = []
    with serve_in_process(*_server_args(SWEEP_ITL_MS[0], SWEEP_TOKENS)) as url:

        def run() -> None:
            failed_in_a_row = 0
            for itl_ms in SWEEP_ITL_MS:
                control(url, "config", {"itl_ms": itl_ms, "jitter_ms": itl_ms / 5})
                fidelity = _measure(url, protocol, 64, SWEEP_BURSTS, SWEEP_TOKENS)
                kept_up = fidelity.ingest_tokens_per_s >= 0.95 * fidelity.sent_tokens_per_s
                ok = fidelity.unmatched == 0 and fidelity.itl_error_ms[1] <= ERROR_TARGET_MS
                steps.append({"itl_ms": itl_ms, "passed": ok and kept_up, **fidelity.row()})
                failed_in_a_row = 0 if ok and kept_up else failed_in_a_row + 1
                if failed_in_a_row == 2:
                    break

        benchmark.pedantic(run, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    first_failure = next((i for i, s in enumerate(steps) if not s["passed"]), len(steps))
    row: dict[str, Any] = {
        "sustained_tokens_per_s": max(
            (s["ingest_tokens_per_s"] for s in steps[:first_failure]), default=0
        ),
        "max_ingest_tokens_per_s": max(s["ingest_tokens_per_s"] for s in steps),
        "others_cpu_share": max(s["others_cpu_share"] for s in steps),
        "steps": steps,
    }
    benchmark.extra_info.update(row)
    key = f"{protocol}-capacity"
    _figures[key] = row
    assert _gate(key, row, ("sustained_tokens_per_s",)) == []
