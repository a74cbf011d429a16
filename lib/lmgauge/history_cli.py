"""Many runs at once: ``lmgauge trend --store URL`` (change points per case and metric),
``lmgauge diff --a R1... --b R2...`` (two sets of runs) and ``lmgauge dashboard``.

The series of a case and metric is split per machine (runs of unlike machines are never
one series), its runs grouped into releases (changepoints.group_releases) and each run's
figure is the median of its samples.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmgauge.changepoints import ChangePoint, Release, Settings, detect, group_releases
from lmgauge.diff import Diff, diff_report_sets
from lmgauge.metrics import describe_change, format_value, higher_is_better
from lmgauge.report import load_report
from lmgauge.store import StoredSeriesPoint


@dataclass(frozen=True)
class Series:
    """One case and metric on one machine: its runs in order, grouped into releases."""

    case_id: str
    metric: str
    machine_id: str | None
    points: tuple[StoredSeriesPoint, ...]
    releases: tuple[Release, ...]
    release_of_run: tuple[int, ...]  # per point: the index of its release
    changes: tuple[ChangePoint, ...]

    def run_figures(self) -> list[float]:
        return [statistics.median(p.values) for p in self.points]

    def direction(self, change: ChangePoint) -> str:
        better = (change.ratio > 1) == higher_is_better(self.metric)
        return "improvement" if better else "regression"


def release_fields(point: StoredSeriesPoint) -> dict[str, str | None]:
    return {
        "backend": point.backend,
        "backend_version": point.backend_version,
        "config_sha256": point.config_sha256,
        "model_digest": point.model_digest,
        "lmgauge_version": point.lmgauge_version,
        "git_commit": point.git_commit,
    }


def analyse(points: Iterable[StoredSeriesPoint], settings: Settings | None = None) -> list[Series]:
    """Points (as ``Store.series`` returns them) as series with their change points."""
    grouped: dict[tuple[str, str, str | None], list[StoredSeriesPoint]] = {}
    for point in points:
        if point.values:
            grouped.setdefault((point.case_id, point.metric, point.machine_id), []).append(point)
    found = []
    for (case_id, metric, machine), members in sorted(
        grouped.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
    ):
        members.sort(key=lambda p: (p.started_utc, p.run_id))
        runs = [(release_fields(p), statistics.median(p.values)) for p in members]
        releases = group_releases(runs)
        owner: list[int] = []
        for index, release in enumerate(releases):
            owner += [index] * len(release.run_figures)
        changes = detect(releases, settings)
        found.append(
            Series(
                case_id,
                metric,
                machine,
                tuple(members),
                tuple(releases),
                tuple(owner),
                tuple(changes),
            )
        )
    return found


def points_from_reports(paths: Sequence[Path]) -> list[StoredSeriesPoint]:
    """Report files as the points a store would give for them: a list of reports is a
    small store."""
    points = []
    for run_id, path in enumerate(paths):
        report = load_report(path)
        config = (report.get("run") or {}).get("config") or {}
        backend = report.get("backend") or {}
        for case_id, case in report["cases"].items():
            environment = case.get("environment") or {}
            for metric, values in (case.get("values") or {}).items():
                points.append(
                    StoredSeriesPoint(
                        run_id=run_id,
                        started_utc=str(report.get("started_utc", "")),
                        machine_id=report.get("machine_id"),
                        profile=str(report.get("profile", "")),
                        backend=str(backend.get("name", "")),
                        backend_version=environment.get("backend_version"),
                        config_sha256=report.get("config_sha256") or config.get("sha256"),
                        model_digest=environment.get("model_digest"),
                        lmgauge_version=report.get("lmgauge_version"),
                        git_commit=report.get("git_commit"),
                        case_id=str(case_id),
                        metric=str(metric),
                        values=tuple(float(v) for v in values),
                    )
                )
    return points


def describe(series: Series, change: ChangePoint) -> str:
    words = describe_change(series.metric, change.ratio)
    kind = "tentative" if change.tentative else series.direction(change).upper()
    text = (
        f"{kind} at release {change.release}: {words} "
        f"(x{change.ratio:.3f}, 95% [{change.low:.3f}, {change.high:.3f}], "
        f"p={change.p_value:.2g}, {change.runs_before} vs {change.runs_after} runs)"
    )
    if change.coinciding:
        text += f"\n      with: {'; '.join(change.coinciding)}"
    return text


def print_trend(all_series: Sequence[Series]) -> None:
    for series in all_series:
        last = series.releases[-1]
        figure = format_value(series.metric, statistics.median(last.run_figures))
        print(
            f"{series.case_id}  {series.metric}  machine {series.machine_id or '?'}: "
            f"{len(series.points)} runs in {len(series.releases)} releases, "
            f"latest {figure}"
        )
        for change in series.changes:
            print(f"    {describe(series, change)}")
        if not series.changes:
            print("    no change point")


def cmd_trend_store(args: argparse.Namespace) -> int:
    from lmgauge.store import Store

    store = Store.open(args.store)
    try:
        metric = args.metric[0] if args.metric and len(args.metric) == 1 else None
        points = store.series(case_filter=args.k, metric=metric, machine=args.machine)
    finally:
        store.close()
    if args.metric:
        points = [p for p in points if p.metric in args.metric]
    if not points:
        print(f"error: no run in {args.store} matches", file=sys.stderr)
        return 2
    all_series = analyse(points)
    print_trend(all_series)
    changes = sum(not c.tentative for s in all_series for c in s.changes)
    regressions = sum(
        not c.tentative and s.direction(c) == "regression" for s in all_series for c in s.changes
    )
    print(f"\n{len(all_series)} series, {changes} change point(s), {regressions} regression(s)")
    return 0


def cmd_diff_sets(args: argparse.Namespace) -> int:
    """``lmgauge diff --a ... --b ...``: the table of a two-report diff, and exit 1 on a
    regression."""
    from lmgauge.cli import report_diff  # as a two-report diff reports

    a = [load_report(p) for p in args.a_reports]
    b = [load_report(p) for p in args.b_reports]
    diff: Diff = diff_report_sets(a, b, tolerance=args.tolerance, allow_unlike=args.allow_unlike)
    print(f"A: {len(a)} run(s): {', '.join(p.name for p in args.a_reports)}")
    print(f"B: {len(b)} run(s): {', '.join(p.name for p in args.b_reports)}\n")
    return report_diff(
        diff,
        nothing="no case was measured on both sides in like environments",
        note="\nnote: with two runs or more per side, each verdict is judged against the "
        "run-to-run noise those runs show (Welch t on log run medians); with one run on a "
        "side, that noise is unknown and the verdict says so.",
    )


def cmd_dashboard(args: argparse.Namespace) -> int:
    from lmgauge.dashboard import build_site
    from lmgauge.store import Store

    store = Store.open(args.store)
    try:
        points = store.series(case_filter=args.k, machine=args.machine)
    finally:
        store.close()
    if not points:
        print(f"error: no run in {args.store} matches", file=sys.stderr)
        return 2
    index = build_site(analyse(points), args.out)
    print(f"wrote {index}")
    return 0


def print_report_changes(paths: Sequence[Path]) -> None:
    """The change points of a list of report files (a small store), after the table of
    ``lmgauge trend reports/*.json``: only the series that have one."""
    all_series = analyse(points_from_reports(paths))
    changed = [s for s in all_series if s.changes]
    releases = max((len(s.releases) for s in all_series), default=0)
    if not changed:
        print(
            f"\nno change point over runs grouped into releases ({len(all_series)} series, "
            f"up to {releases} releases; a change needs 2 releases on each side)"
        )
        return
    print("\nchange points over runs grouped into releases:")
    print_trend(changed)
