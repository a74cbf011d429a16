"""A run report as one self-contained HTML page: no network, plots inline as SVG."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from lmgauge import report_plots
from lmgauge.report_markdown import environment_lines

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; color: #1b1b1b; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
h3.case { font: 12px ui-monospace, monospace; margin: 14px 0 0; }
ul.env { margin: 6px 0; padding-left: 18px; color: #333; }
.summary { font-size: 15px; padding: 8px 12px; border-radius: 6px; background: #eef3f8; }
.summary.bad { background: #fdecea; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.case { white-space: nowrap; font-family: ui-monospace, monospace; font-size: 12px; }
.outcome { font-weight: 600; white-space: nowrap; }
tr.regression .outcome, tr.breach .outcome { color: #b00020; }
tr.refused .outcome, tr.error .outcome { color: #b00020; }
tr.regression, tr.breach, tr.refused, tr.error { background: #fff5f5; }
tr.improvement .outcome, tr.pass .outcome { color: #0a7a2f; }
tr.inconclusive .outcome { color: #8a6d00; }
.note { color: #555; font-style: italic; }
figure { margin: 12px 0; } figure svg { max-width: 100%; height: auto; }
li.fail { color: #b00020; }
"""


def _section(title: str, svg: str | None, missing: str, caption: str = "") -> str:
    if svg is None:
        return f"<h2>{escape(title)}</h2><p class='note'>{escape(missing)}</p>"
    note = f"<figcaption class='note'>{escape(caption)}</figcaption>" if caption else ""
    return f"<h2>{escape(title)}</h2><figure>{svg}{note}</figure>"


def _markdown_inline(line: str) -> str:
    """The environment lines are Markdown: keep their bold and code, escape the rest."""
    text = escape(line.removeprefix("- "))
    for mark, tag in (("**", "b"), ("`", "code")):
        parts = text.split(mark)
        text = "".join(
            part if i % 2 == 0 else f"<{tag}>{part}</{tag}>" for i, part in enumerate(parts)
        )
    return text


def _rows(cases: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str], dict[str, int]]:
    rows: list[str] = []
    failures: list[str] = []
    counts: dict[str, int] = {}
    for case_id, case in cases.items():
        if case.get("skipped") or case.get("error"):
            kind = "skipped" if case.get("skipped") else "error"
            reason = case.get("skipped") or case.get("error")
            rows.append(
                f"<tr class='{kind}'><td class='case'>{escape(case_id)}</td><td>-</td><td>-</td>"
                f"<td>-</td><td><span class='outcome'>{kind}</span>: "
                f"{escape(str(reason))}</td></tr>"
            )
            if kind == "error":
                failures.append(f"{escape(case_id)}: {escape(str(reason))}")
        for row in case.get("verdicts", []):
            outcome = str(row["outcome"])
            counts[outcome] = counts.get(outcome, 0) + 1
            rows.append(
                f"<tr class='{escape(outcome.replace(' ', '-'))}'>"
                f"<td class='case'>{escape(case_id)}</td><td>{escape(row['metric'])}</td>"
                f"<td>{escape(row['measured'])}</td><td>{escape(row['baseline'])}</td>"
                f"<td><span class='outcome'>{escape(outcome)}</span>: "
                f"{escape(row['verdict'])}</td></tr>"
            )
            if row["failed"]:
                failures.append(
                    f"{escape(case_id)} {escape(row['metric'])}: {escape(row['verdict'])}"
                )
    return rows, failures, counts


def render_html(report: Mapping[str, Any]) -> str:
    cases = report["cases"]
    backend = report.get("backend", {}).get("name", "?")
    rows, failures, counts = _rows(cases)
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    verdicts = f"{sum(counts.values())} verdicts: {tally or 'none'}."
    summary = (f"{len(failures)} failed. " if failures else "Nothing failed. ") + verdicts
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>lmgauge: {escape(backend)} on {escape(str(report.get('profile')))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>lmgauge: {escape(backend)} on {escape(str(report.get('profile')))}</h1>",
        "<ul class='env'>",
        *(f"<li>{_markdown_inline(line)}</li>" for line in environment_lines(report)),
        "</ul>",
        f"<p class='summary{' bad' if failures else ''}'>{escape(summary)}</p>",
    ]
    if failures:
        parts += ["<h2>Failures</h2><ul>", *(f"<li class='fail'>{f}</li>" for f in failures)]
        parts.append("</ul>")
    parts += [
        "<h2>Verdicts</h2>",
        "<p class='note'>Figures marked measured were measured in this run; each baseline "
        "says whether it was measured, derived or public.</p>",
        "<table><thead><tr><th>case</th><th>metric</th><th>measured</th><th>baseline</th>"
        "<th>verdict</th></tr></thead><tbody>",
        *rows,
        "</tbody></table>",
    ]
    figures = [
        f"<h3 class='case'>{escape(case_id)}</h3>{svg}"
        for case_id, case in cases.items()
        if (svg := report_plots.against_baseline(case)) is not None
    ]
    parts.append(
        _section(
            "This run against its baseline",
            "".join(figures) or None,
            "No case has a measured baseline to plot against (record one with --update-baselines).",
            "Dots: samples; bars: medians. Grey: the baseline's samples; blue: this run's.",
        )
    )
    parts.append(
        _section(
            "Decode speed against the memory-bandwidth roofline",
            report_plots.decode_vs_roofline(cases),
            "No decode speed was measured.",
            "The roofline is derived: bandwidth / bytes read per token; its source is in "
            "the report (derived.decode_roofline.source).",
        )
    )
    parts.append(
        _section(
            "Latency percentiles",
            report_plots.latency_percentiles(cases),
            "No valid sample with TTFT and inter-token gaps.",
            "From the valid samples only (no warm-up, error, early stop or cache hit).",
        )
    )
    parts.append(
        _section(
            "Memory against context size",
            report_plots.memory_vs_context(cases),
            "Memory against context needs one model measured at two context sizes or more.",
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)
