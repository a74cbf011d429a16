"""A run report as one self-contained HTML page: readable offline, nothing fetched from
the network, plots inline as SVG. Failures come first; every figure says whether it was
measured in this run, or is derived or public, as the report itself says."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from html import escape
from typing import Any

from lmgauge import report_plots
from lmgauge.report_plots import metric_label, short_id

STYLE = """
body { font: 14px/1.45 system-ui, "DejaVu Sans", sans-serif; margin: 20px auto;
       max-width: 1200px; padding: 0 16px; color: #1b1b1b; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 17px; margin: 28px 0 8px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
dl.head { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
dl.head dt { color: #555; } dl.head dd { margin: 0; }
.small { font-size: 12px; color: #555; }
.callout { border-left: 5px solid #8a6d00; background: #fff8e1; padding: 8px 12px;
           margin: 12px 0; }
.summary { font-size: 16px; padding: 10px 14px; border-radius: 6px; margin: 14px 0;
           background: #e8f5ec; border-left: 6px solid #0a7a2f; }
.summary.bad { background: #fdecea; border-left-color: #b00020; }
ol.failures li { margin: 3px 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #e2e2e2; padding: 3px 8px; line-height: 1.3; text-align: left;
         vertical-align: top; }
thead th { background: #f2f2f2; position: sticky; top: 0; }
tr.casehead th { background: #e9eef5; font-weight: normal; padding-top: 7px;
                 overflow-wrap: anywhere; }
tr.casehead b { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
td.metric { width: 19%; } td.measured { width: 22%; } td.baseline { width: 21%; }
.badge { display: inline-block; font-weight: 600; font-size: 12px; padding: 0 6px;
         border-radius: 4px; border: 1px solid currentColor; white-space: nowrap;
         margin-right: 4px; }
.fail .badge { color: #fff; background: #b00020; border-color: #b00020; }
tr.fail { background: #fff3f3; } tr.fail td:first-child { box-shadow: inset 4px 0 #b00020; }
.good .badge { color: #0a7a2f; } .unsure .badge { color: #8a6d00; }
.plain .badge { color: #555; }
.note { color: #555; font-style: italic; margin: 4px 0; }
figure { margin: 8px 0 4px; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 13px; } figcaption ul { margin: 2px 0; }
h3.case { font-size: 13px; margin: 16px 0 0; font-weight: 600; }
"""

FAILING = ("regression", "breach", "refused", "error")
# The mark says what the colour says, for readers without it (or a printer without it).
MARK = {"fail": "✗", "good": "✓", "unsure": "?", "plain": "\u2013"}
SUMMARY_ORDER = [
    ("regression", "regression", "regressions"),
    ("breach", "threshold breach", "threshold breaches"),
    ("refused", "refused", "refused"),
    ("error", "error", "errors"),
    ("improvement", "improvement", "improvements"),
    ("pass", "pass", "passes"),
    ("inconclusive", "inconclusive", "inconclusive"),
    ("reported", "reported without a pass/fail", "reported without a pass/fail"),
    ("no baseline", "without a baseline", "without a baseline"),
]
STATUS_NOTE = {
    "interrupted": "The run was interrupted: this page shows what it measured before it stopped.",
    "running": "The report still says running: the run is going on, or was killed outright; "
    "this page shows what it had measured when the file was read.",
}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _kind(row: Mapping[str, Any]) -> str:
    outcome = str(row.get("outcome", ""))
    if row.get("failed") or outcome in FAILING:
        return "fail"
    if outcome in ("pass", "improvement"):
        return "good"
    return "unsure" if outcome == "inconclusive" else "plain"


def _badge(kind: str, text: str) -> str:
    return f"<span class='badge'>{MARK[kind]} {_e(text)}</span>"


def _header(report: Mapping[str, Any]) -> list[str]:
    backend, host, cases = report.get("backend") or {}, report.get("host") or {}, report["cases"]
    environments = [c.get("environment") or {} for c in cases.values()]
    versions = sorted({str(e["backend_version"]) for e in environments if e.get("backend_version")})
    memory = host.get("memory_bytes")
    host_text = ", ".join(
        str(part)
        for part in (
            host.get("cpu"),
            f"{host['logical_cores']} logical cores" if host.get("logical_cores") else None,
            f"{memory / 1e9:.0f} GB memory" if memory else None,
            " ".join(str(host[k]) for k in ("system", "machine", "os_release") if host.get(k)),
        )
        if part
    )
    workload = (report.get("run") or {}).get("workload") or {}
    summary = report.get("summary") or {}
    commit = str(report.get("git_commit") or "none")[:12]
    rows = [
        (
            "backend",
            f"<b>{_e(backend.get('name', '?'))}</b> {_e(', '.join(versions))}"
            f"<div class='small'>{_e(backend.get('detection', ''))}</div>",
        ),
        ("profile", f"<code>{_e(report.get('profile'))}</code>"),
        ("host", _e(host_text or "?")),
        (
            "status",
            f"<b>{_e(report.get('status'))}</b>"
            + (
                f"; pytest: {_e(summary.get('failed_tests'))} failed tests, exit code "
                f"{_e(summary.get('pytest_exit_code'))}"
                if summary
                else ""
            ),
        ),
        ("started", _e(_when(report.get("started_utc"), report.get("finished_utc")))),
        (
            "workload",
            _e(
                ", ".join(
                    f"{k.replace('_', ' ')} {v}" for k, v in workload.items() if v is not None
                )
            ),
        ),
        ("lmgauge", f"{_e(report.get('lmgauge_version'))}, commit <code>{_e(commit)}</code>"),
    ]
    parts = [
        f"<h1>lmgauge: {_e(backend.get('name', '?'))} on {_e(report.get('profile'))}</h1>",
        "<dl class='head'>",
        *(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows if value),
        "</dl>",
    ]
    if any(e.get("synthetic_weights") for e in environments):
        parts.append(
            "<p class='callout'><b>Synthetic weights.</b> The embedded engine ran synthetic "
            "weights of the real model shapes: speed and memory are real for that shape; "
            "the output text is meaningless.</p>"
        )
    if note := STATUS_NOTE.get(str(report.get("status"))):
        parts.append(f"<p class='callout'><b>Incomplete run.</b> {_e(note)}</p>")
    return parts


def _when(started: object, finished: object) -> str:
    try:
        start = datetime.fromisoformat(str(started))
        end = datetime.fromisoformat(str(finished)) if finished else None
    except ValueError:
        return f"{started or '?'}" + (f", finished {finished}" if finished else "")
    text = f"{start:%Y-%m-%d %H:%M:%S} UTC"
    return text + (f", took {(end - start).total_seconds():.0f} s" if end else ", not finished")


def _failure(case_id: str, row: Mapping[str, Any]) -> str:
    metric = str(row.get("metric", "-"))
    name = f" {_e(metric_label(metric))}" if metric != "-" else ""
    figures = (row.get("measured"), row.get("baseline"))
    compared = any(f not in (None, "-") for f in figures)
    detail = (
        f"<br><span class='small'>this run {_e(figures[0])}; baseline {_e(figures[1])}</span>"
        if compared
        else ""
    )
    return f"<li><b class='mono'>{_e(case_id)}</b>{name}: {_e(row.get('verdict'))}{detail}</li>"


def _case_error_unrecorded(case: Mapping[str, Any]) -> bool:
    """The checker records a case's error as a verdict row too: show the reason once."""
    error = case.get("error")
    return bool(error) and all(row.get("verdict") != error for row in case.get("verdicts") or [])


def _tally(report: Mapping[str, Any]) -> tuple[str, list[str], bool]:
    counts: dict[str, int] = {}
    failures: list[str] = []
    for case_id, case in report["cases"].items():
        for row in case.get("verdicts") or []:
            counts[str(row.get("outcome"))] = counts.get(str(row.get("outcome")), 0) + 1
            if _kind(row) == "fail":
                failures.append(_failure(case_id, row))
        if _case_error_unrecorded(case):
            failures.append(
                f"<li><b class='mono'>{_e(case_id)}</b>: error: {_e(case['error'])}</li>"
            )
    total = sum(counts.values())
    known = {key for key, _, _ in SUMMARY_ORDER}
    words = [
        f"{counts[key]} {one if counts[key] == 1 else many}"
        for key, one, many in SUMMARY_ORDER
        if counts.get(key)
    ] + [f"{n} {_e(key)}" for key, n in counts.items() if key not in known]
    line = f"<b>✗ {len(failures)} failed.</b> " if failures else "<b>✓ Nothing failed.</b> "
    line += f"{total} verdict{'' if total == 1 else 's'}" + (
        f": {', '.join(words)}." if words else "."
    )
    skipped = sum(1 for case in report["cases"].values() if case.get("skipped"))
    if skipped:
        line += f" {skipped} case{'' if skipped == 1 else 's'} skipped."
    failed_tests = (report.get("summary") or {}).get("failed_tests") or 0
    if failed_tests and not failures:
        line += f" But pytest reports {_e(failed_tests)} failed tests: see its output."
    if counts.get("no baseline"):
        line += " <span class='small'>Record baselines with --lmgauge-update-baselines.</span>"
    return line, failures, bool(failures or failed_tests)


def _verdict_table(report: Mapping[str, Any]) -> list[str]:
    parts = [
        "<table><thead><tr><th>metric</th><th>measured (this run)</th>"
        "<th>baseline (provenance)</th><th>verdict</th></tr></thead>"
    ]
    for case_id, case in report["cases"].items():
        parts.append(f"<tbody>{_case_head(case_id, case)}")
        if case.get("skipped"):
            parts.append(_wide("plain", "skipped", str(case["skipped"])))
        if _case_error_unrecorded(case):
            parts.append(_wide("fail", "error", str(case["error"])))
        elif not case.get("verdicts") and not case.get("skipped"):
            measured = [s for s in case.get("samples") or [] if not s.get("warmup")]
            parts.append(
                _wide(
                    "plain",
                    "no verdict",
                    f"{len(measured)} samples measured; the "
                    f"run was {report.get('status')} before a verdict",
                )
            )
        rows = case.get("verdicts") or []
        sources = {str(row.get("baseline_source") or "") for row in rows}
        shared = sources.pop() if len(sources) == 1 else ""
        if shared:
            parts.append(f"<tr><td colspan='4' class='small'>baselines {_e(shared)}</td></tr>")
        parts += [_verdict_row(row, "" if shared else row.get("baseline_source")) for row in rows]
        parts.append("</tbody>")
    parts.append("</table>")
    return parts


def _case_head(case_id: str, case: Mapping[str, Any]) -> str:
    info, env = case.get("case") or {}, case.get("environment") or {}
    samples = case.get("samples") or []
    valid = len(report_plots.valid_samples(case))
    warm = sum(1 for s in samples if s.get("warmup"))
    facts = [
        f"{info['label']} {info.get('quantization', '')}" if info.get("label") else "",
        f"context {info['context_tokens']:,} tokens" if info.get("context_tokens") else "",
        str(env.get("backend_version") or ""),
        f"{valid} valid samples (+{warm} warm-up)" if samples else "",
        f"model {env['model_digest']}" if env.get("model_digest") else "",
    ]
    text = " · ".join(_e(f) for f in facts if f)
    return (
        f"<tr class='casehead'><th colspan='4'><b>{_e(case_id)}</b> "
        f"<span class='small'>{text}</span></th></tr>"
    )


def _wide(kind: str, word: str, reason: str) -> str:
    return f"<tr class='{kind}'><td colspan='4'>{_badge(kind, word)} {_e(reason)}</td></tr>"


def _verdict_row(row: Mapping[str, Any], source: str | None) -> str:
    kind = _kind(row)
    metric = str(row.get("metric"))
    verdict = str(row.get("verdict"))
    if row.get("outcome") == "no baseline":
        verdict = ""  # the summary says once how to record one, not on every row
    spread = len(row.get("baseline_values") or [])
    baseline = _e(row.get("baseline"))
    if source or spread > 1:
        parts = (str(source or ""), f"from {spread} samples" if spread > 1 else "")
        detail = "; ".join(x for x in parts if x)
        baseline += f"<div class='small'>{_e(detail)}</div>"
    label = metric_label(metric)
    name = _e(label) + (f"<div class='small mono'>{_e(metric)}</div>" if label != metric else "")
    return (
        f"<tr class='{kind}'><td class='metric'>{name}</td>"
        f"<td class='measured'>{_e(row.get('measured'))}</td>"
        f"<td class='baseline'>{baseline}</td>"
        f"<td>{_badge(kind, str(row.get('outcome')))} {_e(verdict)}</td></tr>"
    )


def _section(title: str, svg: str | None, missing: str, caption: str = "") -> list[str]:
    if svg is None:
        return [f"<h2>{_e(title)}</h2>", f"<p class='note'>Not drawn: {_e(missing)}</p>"]
    return [f"<h2>{_e(title)}</h2>", f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"]


def _roofline_sources(cases: Mapping[str, Mapping[str, Any]]) -> str:
    by_source: dict[str, list[str]] = {}
    for case_id, case in cases.items():
        roofline = (case.get("derived") or {}).get("decode_roofline") or {}
        if roofline.get("tokens_per_s"):
            key = f"{roofline.get('provenance', 'derived')}: {roofline.get('source', '?')}"
            by_source.setdefault(key, []).append(short_id(case_id))
    if not by_source:
        return "Bars: median decode speed, measured in this run. No case has a derived roofline."
    items = [
        f"<li>{_e(', '.join(names))}: {_e(source)}</li>"
        if len(by_source) > 1
        else f"<li>{_e(source)}</li>"
        for source, names in by_source.items()
    ]
    return (
        "Bars: median decode speed, measured in this run. Orange: the roofline, a "
        "<b>derived</b> figure, the most tokens/s the memory bandwidth allows (bandwidth / "
        f"bytes read per token):<ul>{''.join(items)}</ul>"
    )


def _plots(cases: Mapping[str, Mapping[str, Any]]) -> list[str]:
    figures = [
        f"<h3 class='case mono'>{_e(case_id)}</h3>{svg}"
        for case_id, case in cases.items()
        if (svg := report_plots.against_baseline(case)) is not None
    ]
    parts = _section(
        "This run against its baseline",
        "".join(figures) or None,
        "no case has a baseline with its own samples (record one with --lmgauge-update-baselines).",
        "Grey: the baseline's values (their provenance under each); blue: this run's samples, "
        "measured. Box: the middle half of the values; line: the median; whiskers: the furthest "
        "values within 1.5 box heights; dots: every value.",
    )
    parts += _section(
        "Decode speed against the memory-bandwidth roofline",
        report_plots.decode_vs_roofline(cases),
        "no decode speed was measured.",
        _roofline_sources(cases),
    )
    parts += _section(
        "Latency percentiles",
        report_plots.latency_percentiles(cases),
        "no valid sample (ok, not a warm-up, not invalid) has a TTFT or token gaps.",
        "p50, p90 and p99 of the valid samples only: no warm-up, failed or invalid request. "
        "Inter-token gaps are pooled over those requests. With few requests, p99 is about the "
        "slowest one.",
    )
    sources = sorted(
        {
            str((c.get("memory") or {}).get("source"))
            for c in cases.values()
            if (c.get("memory") or {}).get("source")
        }
    )
    parts += _section(
        "Memory against context size",
        report_plots.memory_vs_context(cases),
        "it needs one model and quantization measured at two context sizes or more.",
        "Solid: resident memory of the serving process, measured. Dashed: model weights + KV "
        f"cache, derived from the model's shape. Sources: {_e('; '.join(sources) or '?')}.",
    )
    return parts


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page that needs nothing else: no network, no other file."""
    cases = report["cases"]
    summary, failures, bad = _tally(report)
    title = f"lmgauge: {report.get('backend', {}).get('name', '?')} on {report.get('profile')}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        *_header(report),
        f"<p class='summary{' bad' if bad else ''}'>{summary}</p>",
    ]
    if failures:
        parts += ["<h2>Failures</h2><ol class='failures'>", *failures, "</ol>"]
    parts += [f"<p class='callout'>{_e(note)}</p>" for note in report.get("messages") or []]
    parts += [
        "<h2>Verdicts</h2>",
        "<p class='note'>Figures marked measured were measured in this run; each baseline "
        "says whether it was measured, derived or public, and where it comes from.</p>",
        *(_verdict_table(report) if cases else ["<p class='note'>No case was measured.</p>"]),
        *_plots(cases),
        "</body></html>",
    ]
    return "\n".join(parts)
