"""Summaries of measured samples, and the verdict of a comparison with a baseline.

Medians and percentiles rather than means: one slow sample on a noisy machine moves a
mean, not a median. Spread is the MAD (median absolute deviation) and the IQR.

A verdict needs both a significant difference (Mann-Whitney U, two-sided) and an effect
larger than the metric's tolerance: a 1% change that is significant is no regression, and
a 30% change on three noisy samples is "inconclusive" until more samples say otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as scipy_stats

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


Verdict = Literal["pass", "regression", "improvement", "inconclusive"]


@dataclass(frozen=True)
class Comparison:
    baseline_median: float
    candidate_median: float
    ratio: float  # candidate / baseline
    p_value: float | None
    verdict: Verdict
    higher_is_better: bool
    tolerance: float
    reason: str

    def describe(self) -> str:
        """E.g. "1.18x slower (significant, p=0.003)" or "no significant change"."""
        if self.verdict == "inconclusive":
            return f"inconclusive: {self.reason}"
        if self.verdict == "pass":
            return f"no significant change ({self.reason})"
        factor = self.ratio if self.ratio >= 1 else 1 / self.ratio
        if self.higher_is_better:  # rates: tokens/s, docs/min
            word = "faster" if self.ratio > 1 else "slower"
        else:  # latencies and memory
            word = "higher" if self.ratio > 1 else "lower"
        return f"{factor:.2f}x {word} (significant, p={self.p_value:.3g}): {self.verdict}"


def compare(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    higher_is_better: bool,
    tolerance: float = 0.05,
    alpha: float = 0.05,
    min_samples: int = 4,
) -> Comparison:
    """Compare two samples of one metric: pass, regression, improvement or inconclusive.

    Four values a side is the fewest with which a two-sided Mann-Whitney test can reach
    p < 0.05 (with three, the smallest possible p is 0.1).
    """
    if tolerance < 0 or not 0 < alpha < 1:
        raise ValueError(f"need tolerance >= 0 and 0 < alpha < 1, got {tolerance}, {alpha}")
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    base_median = float(np.median(base)) if base.size else float("nan")
    cand_median = float(np.median(cand)) if cand.size else float("nan")
    ratio = cand_median / base_median if base_median else float("nan")

    def result(verdict: Verdict, reason: str, p: float | None = None) -> Comparison:
        return Comparison(
            base_median, cand_median, ratio, p, verdict, higher_is_better, tolerance, reason
        )

    if base.size < min_samples or cand.size < min_samples:
        return result(
            "inconclusive", f"too few samples ({base.size} vs {cand.size}; need {min_samples} each)"
        )
    change = ratio - 1 if higher_is_better else 1 - ratio  # > 0: better
    p_value = float(scipy_stats.mannwhitneyu(base, cand, alternative="two-sided").pvalue)
    if abs(change) <= tolerance:
        return result("pass", f"{ratio:.3f}x, within the {tolerance:.0%} tolerance", p_value)
    if p_value >= alpha:
        return result(
            "inconclusive",
            f"{ratio:.3f}x but not significant (p={p_value:.3g} >= {alpha})",
            p_value,
        )
    return result("improvement" if change > 0 else "regression", f"{ratio:.3f}x", p_value)
