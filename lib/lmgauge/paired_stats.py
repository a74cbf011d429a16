"""The verdict of a paired gate: arms A (base) and B (candidate) measured in one session,
in randomized interleaved rounds; per metric, each round gives one ratio B/A of the
arms' round medians.

The per-round log ratios are summarized by the Hodges-Lehmann estimate (the median of
the Walsh averages) and the exact Wilcoxon signed-rank confidence interval (order
statistics of the same Walsh averages; Hollander, Wolfe & Chicken, *Nonparametric
Statistical Methods*, 3rd ed., section 3.3). The interval is distribution-free given a
distribution of log ratios symmetric about its centre; two identical arms run in a
random order give exactly symmetric log ratios, so the false-alarm rate holds without
assuming normal noise. A verdict needs the whole interval beyond the tolerance (a
regression or an improvement) or wholly within it (no change); anything else is
inconclusive, and says how many rounds would settle it.

Pure functions, no I/O: the runner decides what a round measures.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats as scipy_stats

from lmgauge.metrics import change_direction, describe_change

EXACT_MAX_ROUNDS = 50
"""Up to this many ratios the signed-rank null distribution is counted exactly; above
it the normal approximation (with continuity correction) is within 1e-3 of it."""
POWER = 0.8
"""The power at which ``detectable_change`` is quoted."""
WILCOXON_EFFICIENCY = 3 / math.pi
"""Asymptotic efficiency of the signed-rank interval against the t interval under
normal noise (Hodges & Lehmann 1956): its width grows by sqrt(pi / 3), about 2%."""

PairedOutcome = Literal["regression", "improvement", "no change", "inconclusive"]


@dataclass(frozen=True)
class SequentialPlan:
    """When to look at the interval: after ``min_rounds`` rounds, then every
    ``step_rounds`` up to ``max_rounds`` (always a look).

    Looking several times and stopping at the first settled verdict would inflate the
    false-alarm rate if each look used a (1 - alpha) interval, and so would judging
    several metrics of the same rounds. Each interval is instead a 1 - alpha / (looks x
    metrics) interval (Bonferroni over the planned looks and the metrics judged): the
    chance that any interval of a run misses its true ratio is at most alpha, so a run of
    identical arms is called a regression in any metric with probability below alpha / 2,
    however it stops. (With alpha / looks alone, 1 of 20 paired A/A runs of the embedded
    engine here called prefill and TTFT 1.09x slower.)
    """

    min_rounds: int = 12
    step_rounds: int = 4
    max_rounds: int = 24
    alpha: float = 0.02
    metrics: int = 1  # how many metrics are judged from the same rounds

    def __post_init__(self) -> None:
        if self.min_rounds < 2:
            raise ValueError(
                f"min_rounds must be at least 2 (one ratio has no spread), got {self.min_rounds}"
            )
        if self.step_rounds < 1:
            raise ValueError(f"step_rounds must be at least 1, got {self.step_rounds}")
        if self.max_rounds < self.min_rounds:
            raise ValueError(
                f"max_rounds ({self.max_rounds}) must be at least min_rounds ({self.min_rounds})"
            )
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.metrics < 1:
            raise ValueError(f"metrics must be at least 1, got {self.metrics}")

    @property
    def look_rounds(self) -> tuple[int, ...]:
        """The round counts at which the verdict is taken, ``max_rounds`` included."""
        rounds = list(range(self.min_rounds, self.max_rounds + 1, self.step_rounds))
        if rounds[-1] != self.max_rounds:
            rounds.append(self.max_rounds)
        return tuple(rounds)

    @property
    def looks(self) -> int:
        return len(self.look_rounds)

    @property
    def look_confidence(self) -> float:
        """Each interval's confidence: 1 - alpha / (looks x metrics) (Bonferroni)."""
        return 1 - self.alpha / (self.looks * self.metrics)

    def is_look(self, rounds: int) -> bool:
        return rounds in self.look_rounds


@dataclass(frozen=True)
class RatioInterval:
    estimate: float  # Hodges-Lehmann estimate of the ratio B/A
    low: float
    high: float
    achieved_confidence: float  # exact (n <= 50) or normal-approximated coverage
    n: int


@functools.lru_cache(maxsize=EXACT_MAX_ROUNDS + 1)
def _signed_rank_cdf(n: int) -> NDArray[np.float64]:
    """P(T+ <= t) for t = 0 .. n(n+1)/2 under the null: T+ is the sum of the ranks that
    carry a + sign, each of the 2^n sign patterns equally likely. Counted by dynamic
    programming over the ranks (subsets of {1..n} with each sum); exact in int64 up to
    n = 50 (at most 2^50 subsets)."""
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=np.int64)
    counts[0] = 1
    for rank in range(1, n + 1):
        counts[rank:] = counts[rank:] + counts[:-rank].copy()
    cdf: NDArray[np.float64] = np.cumsum(counts) / float(2**n)
    return cdf


def _order_statistic(n: int, confidence: float) -> tuple[int, float]:
    """The largest k (1-based) such that [W(k), W(M + 1 - k)] has coverage >= confidence,
    and that coverage, 1 - 2 P(T+ <= k - 1); k = 1 (the widest interval) when no k reaches
    it, with its lower coverage."""
    walsh_count = n * (n + 1) // 2
    half = (walsh_count + 1) // 2  # beyond this the interval would be inverted
    if n <= EXACT_MAX_ROUNDS:
        cdf = _signed_rank_cdf(n)
        # cdf[k - 1] <= (1 - confidence) / 2, the largest such k
        k = int(np.searchsorted(cdf, (1 - confidence) / 2, side="right"))
        k = min(max(k, 1), half)
        return k, float(1 - 2 * cdf[k - 1])
    mean = walsh_count / 2
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)

    def coverage(k: int) -> float:
        return float(1 - 2 * scipy_stats.norm.cdf((k - 1 + 0.5 - mean) / sd))

    z = float(scipy_stats.norm.ppf((1 - confidence) / 2))
    k = min(max(math.floor(mean + 0.5 + sd * z), 1), half)
    while k > 1 and coverage(k) < confidence:  # guard against rounding at the edge
        k -= 1
    return k, coverage(k)


def _log_ratios(ratios: Sequence[float]) -> NDArray[np.float64]:
    values = np.asarray(ratios, dtype=float)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"need at least 2 ratios (one per round), got {values.size}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        bad = [float(v) for v in values if not (math.isfinite(v) and v > 0)]
        raise ValueError(
            f"ratios must be finite and positive; got {bad[:3]} (drop failed rounds first)"
        )
    logs: NDArray[np.float64] = np.log(values)
    return logs


def _walsh_averages(logs: NDArray[np.float64]) -> NDArray[np.float64]:
    i, j = np.triu_indices(logs.size)
    return np.sort((logs[i] + logs[j]) / 2)


def _log_interval(
    logs: NDArray[np.float64], confidence: float
) -> tuple[float, float, float, float]:
    """(estimate, low, high, achieved confidence) in log space. Picking the k-th and the
    k-th-from-last Walsh averages keeps the interval exactly mirrored when every log
    ratio changes sign (the arms swapped)."""
    walsh = _walsh_averages(logs)
    k, achieved = _order_statistic(logs.size, confidence)
    estimate = float(np.median(walsh))
    return estimate, float(walsh[k - 1]), float(walsh[walsh.size - k]), achieved


def ratio_interval(ratios: Sequence[float], confidence: float = 0.95) -> RatioInterval:
    """Hodges-Lehmann estimate and Wilcoxon signed-rank interval of the ratios B/A.

    When ``len(ratios)`` is too small to reach ``confidence`` (2 / 2^n is the smallest
    two-sided miss rate n ratios allow), the widest interval, from the smallest to the
    largest Walsh average, comes back with its lower ``achieved_confidence``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    logs = _log_ratios(ratios)
    estimate, low, high, achieved = _log_interval(logs, confidence)
    return RatioInterval(math.exp(estimate), math.exp(low), math.exp(high), achieved, logs.size)


def _percent(fraction: float, digits: int = 3) -> str:
    return f"{100 * fraction:.{digits}g}%"


def _span(metric: str, low: float, high: float) -> str:
    """ "1.08x-1.15x slower" when both ends lie on one side of 1, else "0.97x-1.04x";
    with a third decimal where two would print both ends alike."""
    word = ""
    if (low > 1 and high > 1) or (low < 1 and high < 1):
        (low, word), (high, _) = sorted(
            (change_direction(metric, low), change_direction(metric, high))
        )
        word = f" {word}"
    digits = 2 if f"{low:.2f}" != f"{high:.2f}" else 3
    return f"{low:.{digits}f}x-{high:.{digits}f}x{word}"


@dataclass(frozen=True)
class PairedVerdict:
    metric: str
    rounds: int
    ratio: float  # B/A, Hodges-Lehmann estimate
    ratio_low: float
    ratio_high: float
    confidence: float  # achieved by the interval
    outcome: PairedOutcome
    tolerance: float
    higher_is_better: bool
    detectable_change: float  # relative: the smallest regression this run would flag at 80% power
    rounds_to_settle: int | None  # for an inconclusive verdict; None when settled or unknowable
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.describe()}

    def describe(self) -> str:
        """One line, e.g. "1.12x slower [98.8% CI 1.08x-1.15x slower], 12 rounds:
        regression beyond the 2% tolerance; this run could see changes of 3.1% or more"."""
        span = _span(self.metric, self.ratio_low, self.ratio_high)
        if self.outcome == "inconclusive":
            settle = (
                f"; about {self.rounds_to_settle} rounds would settle it"
                if self.rounds_to_settle is not None
                else ""
            )
            return f"inconclusive after {self.rounds} rounds: {self.reason}{settle}"
        if self.outcome == "no change":
            return (
                f"no change: {span} within ±{_percent(self.tolerance)} "
                f"[{_percent(self.confidence)} CI], {self.rounds} rounds"
            )
        return (
            f"{describe_change(self.metric, self.ratio)} [{_percent(self.confidence)} CI "
            f"{span}], {self.rounds} rounds: {self.reason}; this run could see changes of "
            f"{_percent(self.detectable_change, 2)} or more"
        )


def _rounds_for_confidence(confidence: float) -> int:
    """The fewest ratios whose widest signed-rank interval reaches ``confidence``."""
    return max(2, math.ceil(math.log2(2 / (1 - confidence))))


def judge_paired(
    ratios: Sequence[float],
    *,
    metric: str,
    higher_is_better: bool,
    tolerance: float,
    plan: SequentialPlan,
) -> PairedVerdict:
    """The verdict on one metric from its per-round ratios B/A, at the plan's per-look
    confidence. Bounds are symmetric in log space, ±log(1 + tolerance), so swapping the
    arms (every ratio inverted) inverts the ratio and turns a regression into an
    improvement and back.

    ``detectable_change`` is the smallest relative change this run would call a
    regression with 80% power at the measured spread ``sd`` of the n log ratios:
    expm1(log1p(tolerance) + (z[1 - a'/2] + z[0.8]) * sd * sqrt(pi/3) / sqrt(n)), with
    a' = alpha / looks; sqrt(pi/3) is the signed-rank interval's width against the t
    interval's under normal noise.
    """
    if not tolerance >= 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite fraction >= 0, got {tolerance}")
    logs = _log_ratios(ratios)
    n = logs.size
    needed = plan.look_confidence
    estimate, low, high, achieved = _log_interval(logs, needed)
    bound = math.log1p(tolerance)
    sign = -1.0 if higher_is_better else 1.0  # log ratios > 0 are worse times sign
    worse_low, worse_high = sorted((sign * low, sign * high))

    z_look = float(scipy_stats.norm.ppf(1 - (1 - needed) / 2))
    sd = float(np.std(logs, ddof=1))
    width_sd = sd / math.sqrt(WILCOXON_EFFICIENCY)
    detectable = math.expm1(
        bound + (z_look + float(scipy_stats.norm.ppf(POWER))) * width_sd / math.sqrt(n)
    )

    outcome: PairedOutcome
    settle: int | None = None
    tol = _percent(tolerance)
    if achieved < needed:
        outcome = "inconclusive"
        reason = (
            f"too few rounds for the {_percent(needed)} interval the plan needs "
            f"({n} rounds reach at most {_percent(achieved)})"
        )
        settle = _rounds_for_confidence(needed)
    elif worse_low > bound:
        outcome, reason = "regression", f"regression beyond the {tol} tolerance"
    elif worse_high < -bound:
        outcome, reason = "improvement", f"improvement beyond the {tol} tolerance"
    elif -bound <= low and high <= bound:
        outcome, reason = "no change", f"within ±{tol}"
    else:
        outcome = "inconclusive"
        span = _span(metric, math.exp(low), math.exp(high))
        reason = f"{span} straddles the {tol} tolerance"
    if outcome == "inconclusive":
        # The interval shrinks as 1 / sqrt(rounds); it settles once its half-width fits
        # between the estimate and the nearer bound.
        gap = abs(bound - abs(estimate))
        if gap > 0 and width_sd > 0:
            by_width = math.ceil((z_look * width_sd / gap) ** 2)
            settle = max(settle or 0, by_width, n + 1)
        elif settle is not None:
            settle = max(settle, n + 1)
    return PairedVerdict(
        metric=metric,
        rounds=n,
        ratio=math.exp(estimate),
        ratio_low=math.exp(low),
        ratio_high=math.exp(high),
        confidence=achieved,
        outcome=outcome,
        tolerance=tolerance,
        higher_is_better=higher_is_better,
        detectable_change=detectable,
        rounds_to_settle=settle,
        reason=reason,
    )


def should_stop(verdicts: Sequence[PairedVerdict], rounds: int, plan: SequentialPlan) -> bool:
    """Stop at a planned look once every metric is settled, or at ``max_rounds``."""
    if rounds >= plan.max_rounds:
        return True
    return plan.is_look(rounds) and all(v.outcome != "inconclusive" for v in verdicts)
