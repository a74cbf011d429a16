"""Summaries of measured samples, and the outcome of a comparison with a baseline.

Medians and percentiles rather than means: one slow sample on a noisy machine moves a
mean, not a median. Spread is the MAD (median absolute deviation) and the IQR.

A regression needs both a significant difference (Mann-Whitney U, two-sided) and an effect
larger than the metric's tolerance: a 1% change that is significant is no regression, and
a 30% change on three noisy samples is "inconclusive" until more samples say otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as scipy_stats

from lmgauge.measure import Sample
from lmgauge.metrics import SAMPLE_METRICS, describe_change, sample_values
from lmgauge.metrics import error_rate as error_rate  # re-exported: tests/test_measure.py


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


def summarize_samples(samples: Sequence[Sample]) -> dict[str, Summary]:
    """Summaries of the valid samples, per metric of ``metrics.SAMPLE_METRICS``."""
    summaries: dict[str, Summary] = {}
    for metric in SAMPLE_METRICS:
        summary = summarize(sample_values(samples, metric))
        if summary is not None:
            summaries[metric] = summary
    return summaries


Outcome = Literal["pass", "regression", "improvement", "inconclusive"]


@dataclass(frozen=True)
class Comparison:
    baseline_median: float
    candidate_median: float
    ratio: float  # candidate / baseline
    p_value: float | None
    outcome: Outcome
    higher_is_better: bool
    tolerance: float
    reason: str
    metric: str = ""  # names the direction words; "" words a change as higher / lower

    def describe(self) -> str:
        """The verdict: "1.18x slower (significant, p=0.003): regression", "no
        significant change (...)" or "inconclusive: ..."."""
        if self.outcome == "inconclusive":
            return f"inconclusive: {self.reason}"
        if self.outcome == "pass":
            return f"no significant change ({self.reason})"
        words = describe_change(self.metric, self.ratio)
        return f"{words} (significant, p={self.p_value:.3g}): {self.outcome}"


def compare(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    higher_is_better: bool,
    tolerance: float = 0.05,
    alpha: float = 0.05,
    min_samples: int = 4,
    metric: str = "",
) -> Comparison:
    """Compare two samples of one metric: pass, regression, improvement or inconclusive.
    ``metric`` (its name) picks the words of ``describe()``: "slower", "more memory"...

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

    def result(outcome: Outcome, reason: str, p: float | None = None) -> Comparison:
        return Comparison(
            base_median, cand_median, ratio, p, outcome, higher_is_better, tolerance, reason, metric
        )

    if base.size < min_samples or cand.size < min_samples:
        return result(
            "inconclusive", f"too few samples ({base.size} vs {cand.size}; need {min_samples} each)"
        )
    change = ratio - 1 if higher_is_better else 1 - ratio  # > 0: better
    words = describe_change(metric, ratio)
    p_value = float(scipy_stats.mannwhitneyu(base, cand, alternative="two-sided").pvalue)
    if abs(change) <= tolerance:
        return result("pass", f"{words}, within the {tolerance:.0%} tolerance", p_value)
    if p_value >= alpha:
        return result(
            "inconclusive", f"{words} but not significant (p={p_value:.3g} >= {alpha})", p_value
        )
    return result("improvement" if change > 0 else "regression", words, p_value)
