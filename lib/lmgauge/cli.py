"""The ``lmgauge`` command: diff | trend | report | baseline promote | plan | lint-config.

Exit codes: 0 fine, 1 a regression (diff) or a lint error, 2 bad input (a file that is
not a report, an unknown model...), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lmgauge import __version__
from lmgauge.baselines import add_runs, baseline_path, load_baseline, save_baseline
from lmgauge.catalog import GB, resolve_model
from lmgauge.diff import Diff, diff_reports, trend
from lmgauge.errors import LmgaugeError
from lmgauge.metrics import describe_change, format_value
from lmgauge.planner import PlannedModel, estimate_memory, plan_deployment
from lmgauge.report import load_report
from lmgauge.report_markdown import render_markdown
from lmgauge.store_cli import add_parser as add_store_parser


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines)


def _value(metric: str, value: float | None) -> str:
    return "-" if value is None else format_value(metric, value)


def _print_diff(diff: Diff) -> None:
    rows = [
        [
            r.case_id,
            r.metric,
            _value(r.metric, r.a),
            _value(r.metric, r.b),
            f"{r.ratio:.3f}" if r.ratio is not None else "-",
            f"{r.outcome.upper() if r.outcome == 'regression' else r.outcome}: {r.verdict}",
        ]
        for r in diff.rows
    ]
    print(_table(["case", "metric", "A", "B", "B/A", "verdict"], rows))
    means = diff.geometric_means()
    if means:
        print("\ngeometric mean of B/A over the cases in both, per metric:")
        for metric, mean in sorted(means.items()):
            print(f"  {metric}: {mean:.3f} ({describe_change(metric, mean)})")


UNPAIRED_NOTE = (
    "\nnote: A and B are two runs from different moments, not a paired measurement. Their "
    "difference includes the machine's run-to-run drift (on a shared 2-core VM, run medians "
    "moved 12-31% with nothing changed), which two single runs cannot measure: a change "
    "smaller than that drift cannot be told from it here. To see small changes, measure both "
    "in one session: pytest benchmarks --lmgauge-config B.toml --lmgauge-against A.toml"
)


def print_diff_notes(diff: Diff) -> None:
    """A diff's warnings and refused cases, on stderr."""
    for warning in diff.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for case_id, differences in diff.refused.items():
        print(
            f"refused: {case_id} ran in unlike environments: {'; '.join(differences)} "
            "(--allow-unlike compares them anyway)",
            file=sys.stderr,
        )


def report_diff(diff: Diff, *, nothing: str, note: str) -> int:
    """A diff's notes, table, ``note`` and verdict. Exit code: 0, 1 on a regression, 2
    where no case could be compared (``nothing`` says why)."""
    print_diff_notes(diff)
    if not diff.rows:
        print(f"error: {nothing}", file=sys.stderr)
        return 2
    _print_diff(diff)
    print(note)
    regressions = diff.regressions
    if regressions:
        names = ", ".join(f"{r.case_id} {r.metric}" for r in regressions)
        print(f"\n{len(regressions)} regression(s): {names}")
        return 1
    print("\nno regression")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    if args.a_reports or args.b_reports:
        from lmgauge.history_cli import cmd_diff_sets

        if args.a is not None or not args.a_reports or not args.b_reports:
            print("error: give --a REPORTS... and --b REPORTS..., or A B", file=sys.stderr)
            return 2
        return cmd_diff_sets(args)
    if args.a is None or args.b is None:
        print("error: give two reports A B, or --a REPORTS... --b REPORTS...", file=sys.stderr)
        return 2
    a, b = load_report(args.a), load_report(args.b)
    diff = diff_reports(a, b, tolerance=args.tolerance, allow_unlike=args.allow_unlike)
    print(f"A: {args.a} ({a.get('backend', {}).get('name')}, {a.get('started_utc')})")
    print(f"B: {args.b} ({b.get('backend', {}).get('name')}, {b.get('started_utc')})\n")
    return report_diff(
        diff,
        nothing="no case was measured in both reports in like environments",
        note=UNPAIRED_NOTE,
    )


def cmd_trend(args: argparse.Namespace) -> int:
    if args.store:
        from lmgauge.history_cli import cmd_trend_store

        return cmd_trend_store(args)
    reports = sorted((load_report(p) for p in args.reports), key=lambda r: r["started_utc"])
    if len(reports) < 2:
        print("error: a trend needs at least two reports", file=sys.stderr)
        return 2
    series, warnings = trend(reports, tolerance=args.tolerance)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    labels = []
    for i, report in enumerate(reports, 1):
        versions = sorted(
            {str(c.get("environment", {}).get("backend_version")) for c in report["cases"].values()}
        )
        labels.append(f"#{i}")
        print(f"#{i}: {report['started_utc']} {report['backend']['name']} {', '.join(versions)}")
    rows = []
    jumps = []
    for item in series:
        if args.metric and item.metric not in args.metric:
            continue
        cells = []
        for median, step in zip(item.medians, item.steps, strict=True):
            cell = _value(item.metric, median)
            if step is not None and step.outcome in ("regression", "improvement"):
                cell += f" [{describe_change(item.metric, step.ratio or float('nan'))}]"
                jumps.append((step, item))
            cells.append(cell)
        rows.append([item.case_id, item.metric, *cells])
    print()
    print(_table(["case", "metric", *labels], rows))
    if jumps:
        print("\nsignificant changes from one report to the next:")
        for step, item in sorted(jumps, key=lambda j: -abs(math.log(j[0].ratio or 1))):
            index = item.steps.index(step) + 1
            marker = "REGRESSION" if step.outcome == "regression" else "improvement"
            print(
                f"  {marker} #{index - 1} -> #{index}: {item.case_id} {item.metric}: {step.verdict}"
            )
    from lmgauge.history_cli import print_report_changes

    print_report_changes(args.reports)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    report = load_report(args.report)
    if args.format == "markdown":
        text = render_markdown(report)
    else:
        from lmgauge.report_html import render_html

        text = render_html(report)
    if args.output is None and args.format == "markdown":
        sys.stdout.write(text)
        return 0
    output = args.output or args.report.with_suffix(".html")
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    report = load_report(args.report)
    if report.get("status") != "complete" and not args.allow_incomplete:
        print(
            f"error: {args.report} is {report.get('status')!r}, not a complete run; "
            "--allow-incomplete promotes the cases it measured",
            file=sys.stderr,
        )
        return 2
    profile = args.profile or report["profile"]
    backend = report["backend"]["name"]
    runs = {
        case_id: (case["environment"], case["values"])
        for case_id, case in report["cases"].items()
        if case.get("values") and not case.get("error") and case.get("environment")
    }
    if not runs:
        print(f"error: {args.report} has no measured case to promote", file=sys.stderr)
        return 2
    path = baseline_path(args.baselines, profile, backend)
    existing = load_baseline(path)
    source = (
        f"measured on {profile} by lmgauge {report.get('lmgauge_version')}, "
        f"{report.get('started_utc', '')[:10]}; promoted from {args.report.name} "
        f"on {time.strftime('%F')}"
    )
    baseline = add_runs(
        existing, profile, backend, runs, source=source, host=report.get("host", {})
    )
    save_baseline(path, baseline)
    kept = f"; previous kept as {path.name}.prev" if existing else ""
    print(f"baseline {path}: {len(runs)} case(s) from {args.report}{kept}")
    return 0


def _bytes(text: str) -> int:
    units = {"tb": 1000 * GB, "gb": GB, "mb": GB // 1000}
    lowered = text.strip().lower()
    for unit, size in units.items():
        if lowered.endswith(unit):
            return round(float(lowered[: -len(unit)]) * size)
    return round(float(lowered) * GB)


def cmd_plan(args: argparse.Namespace) -> int:
    budget = _bytes(args.memory)
    planned = []
    for i, label in enumerate(args.models.split(",")):
        entry = resolve_model(label.strip())
        estimate = estimate_memory(entry.label, args.quant, args.context)
        print(estimate.describe())
        planned.append(PlannedModel(entry.label, estimate.total_bytes, priority=i + 1))
    plan = plan_deployment(planned, budget, max_loaded=args.max_loaded)
    print(f"\nmemory budget {budget / GB:.1f} GB; priority = the order given")
    print(
        _table(
            ["model", "GB (derived)", "plan", "why"],
            [
                [p.model.name, f"{p.model.size_bytes / GB:.2f}", p.mode, p.reason]
                for p in plan.placements
            ],
        )
    )
    print(f"\npreloaded {plan.preloaded_bytes / GB:.2f} GB of {budget / GB:.1f} GB")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    from lmgauge.lint_cli import main as lint_main

    return lint_main([str(p) for p in args.files])


def cmd_dashboard(args: argparse.Namespace) -> int:
    from lmgauge.history_cli import cmd_dashboard as build

    return build(args)


def setup_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmgauge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lmgauge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    diff = commands.add_parser("diff", help="compare two run reports; exit 1 on a regression")
    diff.add_argument("a", type=Path, nargs="?", help="the earlier report (the baseline)")
    diff.add_argument("b", type=Path, nargs="?", help="the later report (the candidate)")
    diff.add_argument(
        "--a", dest="a_reports", type=Path, nargs="+", help="several runs of the baseline"
    )
    diff.add_argument(
        "--b", dest="b_reports", type=Path, nargs="+", help="several runs of the candidate"
    )
    diff.add_argument("--tolerance", type=float, default=0.05, help="smallest change that counts")
    diff.add_argument(
        "--allow-unlike", action="store_true", help="compare cases from unlike environments"
    )
    diff.set_defaults(func=cmd_diff)

    series = commands.add_parser("trend", help="each metric across a series of reports")
    series.add_argument("reports", type=Path, nargs="*")
    series.add_argument("--store", help="change points over the runs of a results store (URL)")
    series.add_argument("-k", help="--store: only cases whose id contains this")
    series.add_argument("--machine", help="--store: only this machine id")
    series.add_argument("--tolerance", type=float, default=0.05)
    series.add_argument("--metric", action="append", help="only this metric (repeatable)")
    series.set_defaults(func=cmd_trend)

    report = commands.add_parser("report", help="render a run report as Markdown or HTML")
    report.add_argument("report", type=Path)
    report.add_argument("--format", choices=("markdown", "html"), default="markdown")
    report.add_argument("-o", "--output", type=Path, help="default: stdout (md), R.html (html)")
    report.set_defaults(func=cmd_report)

    baseline = commands.add_parser("baseline", help="manage baselines")
    baseline_commands = baseline.add_subparsers(dest="baseline_command", required=True)
    promote = baseline_commands.add_parser(
        "promote", help="record a report's measurements as a baseline run (keeps the old file)"
    )
    promote.add_argument("report", type=Path)
    promote.add_argument("--baselines", type=Path, default=Path("baselines"))
    promote.add_argument("--profile", help="default: the report's hardware profile")
    promote.add_argument("--allow-incomplete", action="store_true")
    promote.set_defaults(func=cmd_promote)

    plan = commands.add_parser("plan", help="the planner's deployment plan for a memory budget")
    plan.add_argument("--memory", required=True, help="budget, e.g. 128GB")
    plan.add_argument(
        "--models", required=True, help="comma-separated labels, most important first"
    )
    plan.add_argument("--quant", default="Q4_K_M")
    plan.add_argument("--context", type=int, default=4096)
    plan.add_argument("--max-loaded", type=int, default=None)
    plan.set_defaults(func=cmd_plan)

    lint = commands.add_parser("lint-config", help="check a server config against real settings")
    lint.add_argument("files", type=Path, nargs="+")
    lint.set_defaults(func=cmd_lint)

    site = commands.add_parser("dashboard", help="a static site of a store's series")
    site.add_argument("--store", required=True, help="the results store (URL)")
    site.add_argument("--out", type=Path, default=Path("site"), help="folder to write")
    site.add_argument("-k", help="only cases whose id contains this")
    site.add_argument("--machine", help="only this machine id")
    site.set_defaults(func=cmd_dashboard)

    add_store_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except LmgaugeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lmgauge diff ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main())
