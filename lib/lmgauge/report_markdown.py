"""A run report as Markdown: the verdict table a reviewer reads in a pull request, and in
GitHub's job summary (``$GITHUB_STEP_SUMMARY``) when that is set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OUTCOME_MARK = {
    "regression": "❌ regression",
    "breach": "❌ threshold breach",
    "refused": "❌ refused",
    "error": "❌ error",
    "improvement": "✅ improvement",
    "pass": "✅ pass",
    "inconclusive": "❔ inconclusive",
    "reported": "reported",
    "no baseline": "no baseline",
}


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def environment_lines(report: Mapping[str, Any]) -> list[str]:
    backend = report.get("backend", {})
    versions = sorted(
        {
            str(case.get("environment", {}).get("backend_version"))
            for case in report["cases"].values()
            if case.get("environment")
        }
    )
    synthetic = any(
        case.get("environment", {}).get("synthetic_weights") for case in report["cases"].values()
    )
    lines = [
        f"- backend: **{backend.get('name')}** {', '.join(versions)} "
        f"({backend.get('detection', '')})",
        f"- hardware profile: `{report.get('profile')}`; host: "
        f"{report.get('host', {}).get('cpu', '?')}",
        f"- lmgauge {report.get('lmgauge_version')}, commit "
        f"`{(report.get('git_commit') or 'none')[:12]}`, started {report.get('started_utc')} "
        f"UTC, status **{report.get('status')}**",
    ]
    if synthetic:
        lines.append(
            "- the embedded engine ran synthetic weights of the real shapes: speed and memory "
            "are real for that shape, output text is meaningless"
        )
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    backend = report.get("backend", {}).get("name")
    lines = [f"## lmgauge: {backend} on {report.get('profile')}", "", *environment_lines(report)]
    lines += [
        "",
        "Figures marked *measured* were measured in this run; baselines say whether they "
        "were measured, derived or public.",
        "",
        "| case | metric | measured | baseline | verdict |",
        "|---|---|---|---|---|",
    ]
    failures = []
    for case_id, case in report["cases"].items():
        if case.get("skipped"):
            lines.append(f"| {case_id} | - | - | - | skipped: {_cell(case['skipped'])} |")
        elif case.get("error"):
            lines.append(f"| {case_id} | - | - | - | ❌ error: {_cell(case['error'])} |")
        elif not case.get("verdicts"):
            measured = [s for s in case.get("samples", []) if not s.get("warmup")]
            lines.append(
                f"| {case_id} | - | {len(measured)} samples measured | - | "
                f"no verdict (the run {report.get('status')} before one) |"
            )
        for row in case.get("verdicts", []):
            mark = OUTCOME_MARK.get(row["outcome"], row["outcome"])
            lines.append(
                f"| {case_id} | {row['metric']} | {_cell(row['measured'])} | "
                f"{_cell(row['baseline'])} | {mark}: {_cell(row['verdict'])} |"
            )
            if row["failed"]:
                failures.append(f"- `{case_id}` {row['metric']}: {row['verdict']}")
    if failures:
        lines += ["", f"### {len(failures)} failed", "", *failures]
    for message in report.get("messages", []):
        lines.append(f"\n_{message}_")
    return "\n".join(lines) + "\n"


def write_step_summary(report: Mapping[str, Any]) -> Path | None:
    """Append the Markdown to GitHub's job summary when running in GitHub Actions."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    with path.open("a", encoding="utf-8") as file:
        file.write(render_markdown(report))
    return path
