"""Comparing run reports: two of them (``lmgauge diff``), two sets of runs (``lmgauge diff
--a ... --b ...``, judged against the run-to-run noise of those runs) or a series
(``lmgauge trend``).

Every metric is judged by the same rule as the pytest gate (judge.decide: Mann-Whitney U
and a minimum effect for per-sample metrics, a bound on memory growth, a reported ratio
for other values measured once per run). Cases measured in unlike environments are not
compared unless asked; a different backend version is expected across releases and only
noted (judge.split_differences, as in the gate).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from lmgauge.baselines import environment_differences
from lmgauge.judge import decide, split_differences
from lmgauge.metrics import describe_change, higher_is_better


@dataclass(frozen=True)
class DiffRow:
    case_id: str
    metric: str
    a: float | None  # median of A
    b: float | None
    ratio: float | None  # b / a
    outcome: str  # pass | regression | improvement | inconclusive | reported | missing
    verdict: str  # "1.18x slower (significant, p=0.003): regression"
    p_value: float | None = None


@dataclass
class Diff:
    rows: list[DiffRow] = field(default_factory=list)
    refused: dict[str, list[str]] = field(default_factory=dict)  # case -> differences
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[DiffRow]:
        return [r for r in self.rows if r.outcome == "regression"]

    def geometric_means(self) -> dict[str, float]:
        """Per metric, the geometric mean of the B/A ratios over the cases in both."""
        ratios: dict[str, list[float]] = {}
        for row in self.rows:
            if row.ratio is not None and row.ratio > 0 and math.isfinite(row.ratio):
                ratios.setdefault(row.metric, []).append(row.ratio)
        return {m: math.exp(statistics.fmean(map(math.log, r))) for m, r in ratios.items()}


def case_environment(report: Mapping[str, Any], case: Mapping[str, Any]) -> dict[str, Any]:
    return {**case.get("environment", {}), "profile": report.get("profile")}


def compare_metric(
    case_id: str, metric: str, a: Sequence[float], b: Sequence[float], tolerance: float
) -> DiffRow:
    if not a or not b:
        present = "B only" if b else "A only"
        return DiffRow(case_id, metric, None, None, None, "missing", f"measured in {present}")
    decision = decide(metric, a, b, tolerance=tolerance)
    p_value = decision.comparison.p_value if decision.comparison else None
    return DiffRow(
        case_id,
        metric,
        statistics.median(a),
        statistics.median(b),
        decision.ratio,
        decision.outcome,
        decision.verdict,
        p_value,
    )


def _admit(
    diff: Diff,
    case_id: str,
    env_a: Mapping[str, Any],
    env_b: Mapping[str, Any],
    allow_unlike: bool,
) -> bool:
    """Whether a case's two environments may be compared; notes a release change, refuses
    an unlike environment (into ``diff``) unless ``allow_unlike``."""
    unlike, release = split_differences(environment_differences(env_a, env_b))
    if release:
        diff.warnings.append(f"{case_id}: across releases ({'; '.join(release)})")
    if unlike and not allow_unlike:
        diff.refused[case_id] = unlike
        return False
    if unlike:
        diff.warnings.append(f"{case_id}: compared despite {'; '.join(unlike)}")
    return True


def diff_reports(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    tolerance: float = 0.05,
    allow_unlike: bool = False,
) -> Diff:
    diff = Diff()
    for case_id in [c for c in a["cases"] if c in b["cases"]]:
        case_a, case_b = a["cases"][case_id], b["cases"][case_id]
        env_a, env_b = case_environment(a, case_a), case_environment(b, case_b)
        if not _admit(diff, case_id, env_a, env_b, allow_unlike):
            continue
        values_a, values_b = case_a.get("values", {}), case_b.get("values", {})
        for metric in [*values_a, *(m for m in values_b if m not in values_a)]:
            diff.rows.append(
                compare_metric(
                    case_id, metric, values_a.get(metric, []), values_b.get(metric, []), tolerance
                )
            )
    only_a = sorted(set(a["cases"]) - set(b["cases"]))
    only_b = sorted(set(b["cases"]) - set(a["cases"]))
    if only_a:
        diff.warnings.append(f"only in A: {', '.join(only_a)}")
    if only_b:
        diff.warnings.append(f"only in B: {', '.join(only_b)}")
    return diff


@dataclass(frozen=True)
class TrendStep:
    """One metric of one case from one report to the next."""

    case_id: str
    metric: str
    medians: tuple[float | None, ...]  # one per report, in order
    steps: tuple[DiffRow | None, ...]  # report i-1 -> i, for i >= 1


def trend(
    reports: Sequence[Mapping[str, Any]], *, tolerance: float = 0.05
) -> tuple[list[TrendStep], list[str]]:
    """Each case's metrics across ``reports`` (oldest first), with the verdict of every
    step from one report to the next. Returns the series and warnings."""
    warnings: list[str] = []
    keys: dict[tuple[str, str], None] = {}
    for report in reports:
        for case_id, case in report["cases"].items():
            for metric in case.get("values", {}):
                keys.setdefault((case_id, metric), None)
    series = []
    for case_id, metric in keys:
        values = [
            report["cases"].get(case_id, {}).get("values", {}).get(metric, []) for report in reports
        ]
        steps: list[DiffRow | None] = [None]
        for i in range(1, len(reports)):
            before, after = reports[i - 1]["cases"].get(case_id), reports[i]["cases"].get(case_id)
            if before is None or after is None or not values[i - 1] or not values[i]:
                steps.append(None)
                continue
            unlike, _release = split_differences(
                environment_differences(
                    case_environment(reports[i - 1], before), case_environment(reports[i], after)
                )
            )
            if unlike:
                warnings.append(f"{case_id} {metric} step {i}: unlike ({'; '.join(unlike)})")
            steps.append(compare_metric(case_id, metric, values[i - 1], values[i], tolerance))
        medians = tuple(statistics.median(v) if v else None for v in values)
        series.append(TrendStep(case_id, metric, medians, tuple(steps)))
    return series, warnings


def run_medians(reports: Sequence[Mapping[str, Any]], case_id: str, metric: str) -> list[float]:
    """One figure per report (run): the median of its values of ``metric`` for ``case_id``."""
    medians = []
    for report in reports:
        values = report["cases"].get(case_id, {}).get("values", {}).get(metric, [])
        if values:
            medians.append(statistics.median(values))
    return medians


def compare_runs(
    case_id: str, metric: str, a: Sequence[float], b: Sequence[float], tolerance: float
) -> DiffRow:
    """Side B's run medians against side A's, judged against the run-to-run noise they
    show: Welch's t on log run medians, the ratio of geometric means with its 95%
    t-interval. With one run on a side that noise is unknown: the per-sample rule of a
    two-report diff is all there is, and the verdict says so."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("compare_runs needs two runs or more on each side")
    log_a, log_b = np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float))
    va, vb = log_a.var(ddof=1) / len(a), log_b.var(ddof=1) / len(b)
    shift = float(log_b.mean() - log_a.mean())
    ratio = math.exp(shift)
    if va + vb == 0:
        p_value, low, high = (1.0 if shift == 0 else 0.0), ratio, ratio
    else:
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        se = math.sqrt(va + vb)
        p_value = float(2 * scipy_stats.t.sf(abs(shift) / se, df))
        half = float(scipy_stats.t.ppf(0.975, df)) * se
        low, high = math.exp(shift - half), math.exp(shift + half)
    better = (ratio > 1) == higher_is_better(metric)
    words = f"{describe_change(metric, ratio)} [x{low:.3f}, x{high:.3f}]"
    if p_value < 0.05 and abs(ratio - 1) >= tolerance:
        outcome = "improvement" if better else "regression"
        verdict = f"{words} (significant, p={p_value:.2g}): {outcome}"
    elif p_value < 0.05:
        outcome, verdict = "pass", f"{words} (significant, p={p_value:.2g}, within tolerance)"
    elif 1 / (1 + tolerance) <= low and high <= 1 + tolerance:
        outcome, verdict = "pass", f"{words}: no significant change (p={p_value:.2g})"
    else:
        outcome = "inconclusive"
        verdict = f"{words}: not significant (p={p_value:.2g}), too noisy to rule out a change"
    verdict += f"; Welch t on log run medians, {len(a)} vs {len(b)} runs"
    return DiffRow(
        case_id,
        metric,
        statistics.median(a),
        statistics.median(b),
        ratio,
        outcome,
        verdict,
        p_value,
    )


def diff_report_sets(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    *,
    tolerance: float = 0.05,
    allow_unlike: bool = False,
) -> Diff:
    """Several reports (runs) per side: per case and metric, the run medians of B against
    those of A (``compare_runs``); a side of one run falls back to the per-sample rule of
    ``diff_reports``, labelled as such."""
    cases_a = {c: r for r in reversed(a) for c in r["cases"]}  # case -> its first report
    cases_b = {c: r for r in reversed(b) for c in r["cases"]}
    diff = Diff()
    for case_id in [c for c in cases_a if c in cases_b]:
        first_a, first_b = cases_a[case_id], cases_b[case_id]
        env_a = case_environment(first_a, first_a["cases"][case_id])
        env_b = case_environment(first_b, first_b["cases"][case_id])
        if not _admit(diff, case_id, env_a, env_b, allow_unlike):
            continue
        metrics: dict[str, None] = {}
        for report in [*a, *b]:
            metrics.update(dict.fromkeys(report["cases"].get(case_id, {}).get("values", {})))
        for metric in metrics:
            med_a, med_b = run_medians(a, case_id, metric), run_medians(b, case_id, metric)
            positive = all(m > 0 and math.isfinite(m) for m in [*med_a, *med_b])
            if len(med_a) >= 2 and len(med_b) >= 2 and positive:
                diff.rows.append(compare_runs(case_id, metric, med_a, med_b, tolerance))
                continue
            values = [
                [
                    v
                    for r in side
                    for v in r["cases"].get(case_id, {}).get("values", {}).get(metric, [])
                ]
                for side in (a, b)
            ]
            row = compare_metric(case_id, metric, values[0], values[1], tolerance)
            if row.outcome != "missing":
                short = [s for s, m in (("A", med_a), ("B", med_b)) if len(m) < 2]
                sides = "sides A and B" if len(short) == 2 else f"side {''.join(short)}"
                label = f"one run on {sides}: run-to-run noise unknown, per-sample test only"
                if not short:
                    label = "a run median is not positive (no ratio): per-sample test only"
                row = replace(row, verdict=f"{row.verdict} [{label}]")
            diff.rows.append(row)
    for name, mine, theirs in (("A", cases_a, cases_b), ("B", cases_b, cases_a)):
        only = sorted(set(mine) - set(theirs))
        if only:
            diff.warnings.append(f"only in {name}: {', '.join(only)}")
    return diff
