"""Summaries of measured samples: robust statistics, per metric.

Medians and percentiles rather than means: one slow sample on a noisy machine moves a
mean, not a median. Spread is the MAD (median absolute deviation) and the IQR.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lmgauge.measure import Sample


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p50: float
    p90: float
    p99: float
    mad: float
    iqr: float
    min: float
    max: float

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def summarize(values: Iterable[float]) -> Summary | None:
    """Median, percentiles and spread of ``values``; None when there are none."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if data.size == 0:
        return None
    p25, p50, p75, p90, p99 = np.percentile(data, [25, 50, 75, 90, 99])
    return Summary(
        n=int(data.size),
        median=float(p50),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        mad=float(np.median(np.abs(data - p50))),
        iqr=float(p75 - p25),
        min=float(data.min()),
        max=float(data.max()),
    )


SAMPLE_METRICS: dict[str, Callable[[Sample], float | None]] = {
    "ttft_s": lambda s: s.ttft_s,
    "e2e_s": lambda s: s.e2e_s,
    "decode_tokens_per_s": lambda s: s.decode_tokens_per_s,
    "prefill_tokens_per_s": lambda s: s.prefill_tokens_per_s,
    "server_decode_tokens_per_s": lambda s: s.server_decode_tokens_per_s,
    "server_prefill_tokens_per_s": lambda s: s.server_prefill_tokens_per_s,
}
"""Per-sample metrics; ``server_*`` are the engine's own figures, the others the client's."""


def summarize_samples(samples: Sequence[Sample]) -> dict[str, Summary]:
    """Summaries of the valid samples, per metric, plus ``itl_s`` over all their gaps."""
    valid = [s for s in samples if s.valid]
    summaries: dict[str, Summary] = {}
    for metric, get in SAMPLE_METRICS.items():
        summary = summarize(v for s in valid if (v := get(s)) is not None)
        if summary is not None:
            summaries[metric] = summary
    itl = summarize(gap for s in valid for gap in s.itl_s)
    if itl is not None:
        summaries["itl_s"] = itl
    return summaries


def error_rate(samples: Sequence[Sample]) -> float:
    """Share of measured (non-warm-up) requests that failed."""
    measured = [s for s in samples if not s.warmup]
    return sum(not s.ok for s in measured) / len(measured) if measured else 0.0
