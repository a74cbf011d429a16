"""Change points in a series of releases, each measured by several runs.

A run's figure is the median of its samples; the run-to-run noise is read from the runs
themselves (never assumed). Detection has two stages:

1. Candidates: an optimal piecewise-constant segmentation (PELT, from ``ruptures``) of the
   per-release mean of log run figures, standardized by a robust estimate of the
   release-to-release noise (MAD of consecutive differences), with a penalty of
   ``penalty * log(n)`` per change. A run further than ``outlier`` run-to-run sd from its
   release's median (the sd pooled robustly over all releases) is left out first, so one
   wild run does not move its release.
2. The guard, which decides what is reported: a candidate stays only if the runs of the
   releases on each side (up to ``window`` releases, not past the neighbouring change
   points) differ by Welch's t on log run figures (``p < alpha``) by at least
   ``min_effect``, and each side holds at least ``min_releases`` releases; a one-release
   excursion that comes back is thus a spike, not a change. A change within ``edge``
   releases of the end of the series is *tentative*: reported as such, never as a change,
   since the releases that would tell a step from a spike are not measured yet.

Each change point carries the ratio after/before of the run-figure medians, a bootstrap
interval over runs, and what else changed between the two releases (backend version,
config hash, model digest, lmgauge version, git commit).

Why PELT (ruptures) and not E-Divisive: on the study's histories (scripts/
changepoint_study.py, 100 seeds, 3 runs per release) this finds 91.5% of the >=10% steps
within +-2 releases with 0.28 false change points per 100 releases; MongoDB's
signal-processing-algorithms E-Divisive (permutation test) 77.2% / 0.25, Apache Otava's
E-Divisive with a t-test (Fleming et al., ICPE 2023; after Daly et al., ICPE 2020) 84.0% /
0.47. Both also pin what this project cannot take (numpy<2; numpy==2.2 and scipy<1.17
with BigQuery, Slack and PostgreSQL clients); ruptures needs numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import ruptures  # type: ignore[import-untyped]
from scipy import stats as scipy_stats

RELEASE_FIELDS = (
    "backend",
    "backend_version",
    "config_sha256",
    "model_digest",
    "lmgauge_version",
    "git_commit",
)
"""What makes a release: consecutive runs that agree on all of these are one release."""


@dataclass(frozen=True)
class Release:
    """One release of a series: its identity and its runs' figures (run medians)."""

    label: str
    run_figures: tuple[float, ...]
    fields: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Tuned by scripts/changepoint_study.py on seeds other than the ones it reports."""

    penalty: float = 2.0  # per change, in units of log(number of releases)
    alpha: float = 0.001  # Welch's t between the runs on each side
    min_effect: float = 0.03  # smallest |ratio - 1| reported
    outlier: float = 4.0  # a run this many run-to-run sd from its release's median is left out
    window: int = 20  # releases on each side that the guard and the effect use
    min_releases: int = 2  # per side: fewer is a spike, not a change
    edge: int = 3  # a change within this many releases of the end is tentative
    bootstrap: int = 400  # resamples of the effect interval
    confidence: float = 0.95


@dataclass(frozen=True)
class ChangePoint:
    index: int  # the first release at the new level
    release: str
    ratio: float  # median of run figures after / before
    low: float  # confidence interval of the ratio (bootstrap over runs)
    high: float
    p_value: float  # Welch's t on log run figures, before vs after
    runs_before: int
    runs_after: int
    tentative: bool  # within ``edge`` releases of the end: not yet told from a spike
    coinciding: tuple[str, ...] = ()  # "backend_version: 0.5.1 -> 0.5.2"

    def describe(self) -> str:
        kind = "tentative change" if self.tentative else "change"
        text = (
            f"{kind} at {self.release}: x{self.ratio:.3f} "
            f"[{self.low:.3f}, {self.high:.3f}] (p={self.p_value:.2g}, "
            f"{self.runs_before} vs {self.runs_after} runs)"
        )
        return text + (f"; with {', '.join(self.coinciding)}" if self.coinciding else "")


def group_releases(
    runs: Sequence[tuple[Mapping[str, str | None], float]], *, label_field: str = "backend_version"
) -> list[Release]:
    """Runs in order, each (fields, figure), grouped into releases: consecutive runs with
    the same ``RELEASE_FIELDS`` are one release."""
    releases: list[Release] = []
    key: tuple[str | None, ...] | None = None
    figures: list[float] = []
    fields: Mapping[str, str | None] = {}
    for run_fields, figure in runs:
        run_key = tuple(run_fields.get(f) for f in RELEASE_FIELDS)
        if run_key != key and figures:
            releases.append(_release(len(releases), fields, figures, label_field))
            figures = []
        key, fields = run_key, run_fields
        figures.append(figure)
    if figures:
        releases.append(_release(len(releases), fields, figures, label_field))
    return releases


def _release(
    index: int, fields: Mapping[str, str | None], figures: list[float], label_field: str
) -> Release:
    name = fields.get(label_field) or "?"
    commit = fields.get("git_commit")
    label = f"#{index} {name}" + (f" @{commit[:8]}" if commit else "")
    return Release(label, tuple(figures), {f: fields.get(f) for f in RELEASE_FIELDS})


def noise_scale(levels: np.ndarray) -> float:
    """Release-to-release noise of ``levels`` (log figures), robust to steps: the MAD of
    consecutive differences over sqrt(2)."""
    if len(levels) < 3:
        return float("nan")
    return float(1.4826 * np.median(np.abs(np.diff(levels))) / math.sqrt(2))


class _CumulativeL2(ruptures.base.BaseCost):  # type: ignore[misc]
    """ruptures' l2 cost (squared deviations from the segment mean) from cumulative
    sums: O(1) per segment where ruptures' own CostL2 takes O(length), which made a
    series of 1,700 releases take seconds."""

    model = "l2-cumulative"
    min_size = 1

    def fit(self, signal: np.ndarray) -> _CumulativeL2:
        x = np.asarray(signal, dtype=float).reshape(-1)
        self.signal = x.reshape(-1, 1)
        self._sum = np.concatenate([[0.0], np.cumsum(x)])
        self._squares = np.concatenate([[0.0], np.cumsum(x * x)])
        return self

    def error(self, start: int, end: int) -> float:
        total = self._sum[end] - self._sum[start]
        return float(self._squares[end] - self._squares[start] - total * total / (end - start))


def candidates(levels: np.ndarray, settings: Settings) -> list[int]:
    """Release indices where PELT puts a new segment (stage 1, unguarded)."""
    n = len(levels)
    scale = noise_scale(levels)
    if n < 2 * settings.min_releases or not math.isfinite(scale):
        return []
    scale = max(scale, 1e-9)
    signal = ((levels - np.median(levels)) / scale).reshape(-1, 1)
    algo = ruptures.Pelt(custom_cost=_CumulativeL2(), min_size=settings.min_releases, jump=1).fit(
        signal
    )
    ends: list[int] = algo.predict(pen=settings.penalty * math.log(n))
    return [int(e) for e in ends[:-1]]


def clean_log_runs(releases: Sequence[Release], outlier: float) -> list[np.ndarray]:
    """Per release, the logs of its run figures without the runs further than ``outlier``
    run-to-run sd from the release's median (kept where fewer than two would remain)."""
    logs = [np.log(np.asarray(r.run_figures, dtype=float)) for r in releases]
    deviations = np.concatenate([x - np.median(x) for x in logs if len(x) >= 2] or [np.zeros(1)])
    nonzero = np.abs(deviations[deviations != 0])
    spread = 1.4826 * float(np.median(nonzero)) if len(nonzero) else 0.0
    if spread <= 0:
        return logs
    cleaned = []
    for x in logs:
        keep = np.abs(x - np.median(x)) <= outlier * spread
        cleaned.append(x[keep] if keep.sum() >= 2 else x)
    return cleaned


def _side_runs(runs: Sequence[np.ndarray], start: int, stop: int) -> np.ndarray:
    return np.concatenate(list(runs[start:stop]) or [np.zeros(0)])


def _welch(before: np.ndarray, after: np.ndarray) -> float:
    if len(before) < 2 or len(after) < 2:
        return 1.0
    if np.ptp(before) == 0 and np.ptp(after) == 0:
        return 0.0 if before[0] != after[0] else 1.0
    return float(scipy_stats.ttest_ind(before, after, equal_var=False).pvalue)


def effect_interval(
    before: np.ndarray, after: np.ndarray, settings: Settings, seed: int = 0
) -> tuple[float, float, float]:
    """Ratio of medians after/before of run figures (given as logs), and its bootstrap
    percentile interval (resampling runs within each side)."""
    ratio = float(np.exp(np.median(after) - np.median(before)))
    rng = np.random.default_rng(seed)
    b = rng.choice(before, size=(settings.bootstrap, len(before)))
    a = rng.choice(after, size=(settings.bootstrap, len(after)))
    draws = np.exp(np.median(a, axis=1) - np.median(b, axis=1))
    tail = (1 - settings.confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return ratio, float(low), float(high)


def coinciding(before: Release, after: Release) -> tuple[str, ...]:
    """The release fields that differ between two releases, as "key: old -> new"."""
    return tuple(
        f"{key}: {before.fields.get(key)} -> {after.fields.get(key)}"
        for key in RELEASE_FIELDS
        if before.fields.get(key) != after.fields.get(key)
    )


def _sides(
    runs: Sequence[np.ndarray], points: Sequence[int], k: int, window: int
) -> tuple[int, int, int]:
    i = points[k]
    lo = max(points[k - 1] if k > 0 else 0, i - window)
    hi = min(points[k + 1] if k + 1 < len(points) else len(runs), i + window)
    return lo, i, hi


def _test(
    runs: Sequence[np.ndarray], points: Sequence[int], k: int, settings: Settings
) -> tuple[bool, float]:
    """Does the candidate ``points[k]`` pass the guard against its neighbours?"""
    lo, i, hi = _sides(runs, points, k, settings.window)
    tentative = len(runs) - i <= settings.edge
    if i - lo < settings.min_releases or (hi - i < settings.min_releases and not tentative):
        return False, 1.0
    before, after = _side_runs(runs, lo, i), _side_runs(runs, i, hi)
    p_value = _welch(before, after)
    effect = abs(math.expm1(float(np.median(after) - np.median(before))))
    return p_value < settings.alpha and effect >= settings.min_effect, p_value


def detect(releases: Sequence[Release], settings: Settings | None = None) -> list[ChangePoint]:
    """The change points of ``releases`` (oldest first), guarded; those at the end of
    the series are flagged ``tentative``. A series with a figure that is not positive
    (an error rate of 0) has no ratios, hence no change points here."""
    settings = settings or Settings()
    figures = np.array([f for r in releases for f in r.run_figures], dtype=float)
    if not releases or not np.all(np.isfinite(figures)) or np.any(figures <= 0):
        return []  # ratios only: an error rate of 0 has none
    runs = clean_log_runs(releases, settings.outlier)
    levels = np.array([x.mean() for x in runs])
    points = candidates(levels, settings)
    points += _tail_candidates(runs, points, settings)
    # Drop the weakest failing candidate and test its neighbours again, until all pass.
    while points:
        results = [_test(runs, points, k, settings) for k in range(len(points))]
        failing = [(p, k) for k, (ok, p) in enumerate(results) if not ok]
        if not failing:
            break
        points.pop(max(failing)[1])
    found = []
    for k in range(len(points)):
        lo, i, hi = _sides(runs, points, k, settings.window)
        before, after = _side_runs(runs, lo, i), _side_runs(runs, i, hi)
        ratio, low, high = effect_interval(before, after, settings, seed=i)
        found.append(
            ChangePoint(
                index=i,
                release=releases[i].label,
                ratio=ratio,
                low=low,
                high=high,
                p_value=_welch(before, after),
                runs_before=len(before),
                runs_after=len(after),
                tentative=len(releases) - i <= settings.edge,
                coinciding=coinciding(releases[i - 1], releases[i]),
            )
        )
    return found


def _tail_candidates(
    runs: Sequence[np.ndarray], points: Sequence[int], settings: Settings
) -> list[int]:
    """PELT needs ``min_releases`` after a change; the last releases are checked against
    the level before them so that a change there shows, as tentative."""
    n = len(runs)
    last = points[-1] if points else 0
    for m in range(min(settings.edge, settings.min_releases - 1), 0, -1):
        i = n - m
        if i - last < settings.min_releases or i <= 0:
            continue
        ok, _ = _test(runs, [*points, i], len(points), settings)
        if ok:
            return [i]
    return []
