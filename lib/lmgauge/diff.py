"""Comparing run reports: two of them (``lmgauge diff``) or a series (``lmgauge trend``).

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
from dataclasses import dataclass, field
from typing import Any

from lmgauge.baselines import environment_differences
from lmgauge.judge import decide, split_differences


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
        unlike, release = split_differences(environment_differences(env_a, env_b))
        if release:
            diff.warnings.append(f"{case_id}: across releases ({'; '.join(release)})")
        if unlike:
            if not allow_unlike:
                diff.refused[case_id] = unlike
                continue
            diff.warnings.append(f"{case_id}: compared despite {'; '.join(unlike)}")
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
