"""``lmgauge dashboard``: a static site of a results store's series, for offline viewing.

``index.html`` says what changed since the last release, per machine; one page per case,
metric and machine draws every run (its median), the release boundaries, the change
points with their effect and interval, and the level between them. Plots are inline SVG
written here (no script, no network, no other file): a store of 10,000 runs builds in a
second or two, where a plotting library would take a while per series.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import statistics
from collections.abc import Sequence
from html import escape
from pathlib import Path

from lmgauge.changepoints import ChangePoint
from lmgauge.history_cli import Series, describe
from lmgauge.metrics import describe_change, format_value
from lmgauge.report_html import STYLE

EXTRA_STYLE = """
.plot { border: 1px solid #e2e2e2; background: #fff; }
.regression { color: #b00020; font-weight: 600; } .improvement { color: #0a7a2f; font-weight: 600; }
.tentative { color: #8a6d00; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; }
"""
WIDTH, HEIGHT = 1100, 300
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 24, 36
COLOURS = {"regression": "#b00020", "improvement": "#0a7a2f", "tentative": "#8a6d00"}
RUN_COLOUR = "#1f77b4"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def page_name(series: Series) -> str:
    text = f"{series.case_id}-{series.metric}-{series.machine_id or 'unknown'}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:120]
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.html"


def kind(series: Series, change: ChangePoint) -> str:
    return "tentative" if change.tentative else series.direction(change)


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{_e(title)}</title><style>{STYLE}{EXTRA_STYLE}</style></head><body>",
            *body,
            "</body></html>",
        ]
    )


def plot(series: Series) -> str:
    """The runs of a series as an inline SVG: one dot per run (its median), grey lines
    where a release starts, a coloured line at each change point, the level between."""
    figures = series.run_figures()
    n = len(figures)
    low, high = min(figures), max(figures)
    pad = (high - low) * 0.08 or abs(high) * 0.05 or 1.0
    low, high = low - pad, high + pad
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(run: float) -> float:
        return LEFT + (run + 0.5) / n * inner_w

    def y(value: float) -> float:
        return TOP + (high - value) / (high - low) * inner_h

    first_run = [0]
    for release in series.releases[:-1]:
        first_run.append(first_run[-1] + len(release.run_figures))
    parts = [
        f"<svg class='plot' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' "
        f"height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}' role='img' "
        f"aria-label='{_e(series.metric)} per run'>",
        f"<rect x='{LEFT}' y='{TOP}' width='{inner_w}' height='{inner_h}' fill='#fafafa'/>",
    ]
    for k in range(5):
        value = low + (high - low) * k / 4
        parts.append(
            f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{y(value):.1f}' y2='{y(value):.1f}' "
            f"stroke='#e6e6e6'/><text x='{LEFT - 6}' y='{y(value) + 4:.1f}' font-size='11' "
            f"text-anchor='end'>{_e(format_value(series.metric, value))}</text>"
        )
    if len(series.releases) <= inner_w / 3:  # release boundaries, where they can be seen
        path = "".join(f"M{x(r - 0.5):.1f} {TOP}V{TOP + inner_h}" for r in first_run[1:] if r > 0)
        if path:
            parts.append(f"<path d='{path}' stroke='#cfcfcf' stroke-width='0.6'/>")
    dots = "".join(f"M{x(i):.1f} {y(v):.1f}h0" for i, v in enumerate(figures))
    parts.append(
        f"<path d='{dots}' stroke='{RUN_COLOUR}' stroke-width='{4 if n < 400 else 2.5}' "
        "stroke-linecap='round'/>"
    )
    bounds = [0, *(first_run[c.index] for c in series.changes), n]
    for start, stop in itertools.pairwise(bounds):
        level = statistics.median(figures[start:stop])
        parts.append(
            f"<line x1='{x(start - 0.5):.1f}' x2='{x(stop - 0.5):.1f}' y1='{y(level):.1f}' "
            f"y2='{y(level):.1f}' stroke='#333' stroke-width='1.5'/>"
        )
    for change in series.changes:
        at = x(first_run[change.index] - 0.5)
        colour = COLOURS[kind(series, change)]
        dash = " stroke-dasharray='5 3'" if change.tentative else ""
        parts.append(
            f"<line x1='{at:.1f}' x2='{at:.1f}' y1='{TOP}' y2='{TOP + inner_h}' "
            f"stroke='{colour}' stroke-width='2'{dash}/>"
            f"<text x='{at + 4:.1f}' y='{TOP + 12}' font-size='12' fill='{colour}'>"
            f"x{change.ratio:.3f}</text>"
        )
    parts.append(
        f"<text x='{LEFT + inner_w / 2:.0f}' y='{HEIGHT - 8}' font-size='12' "
        f"text-anchor='middle'>runs in time order ({n} runs, "
        f"{len(series.releases)} releases)</text></svg>"
    )
    return "".join(parts)


def _change_item(series: Series, change: ChangePoint, where: str = "") -> str:
    text = describe(series, change).replace("\n      with:", "; with:")
    return f"<li><span class='{kind(series, change)}'>{_e(text)}</span>{where}</li>"


def series_page(series: Series) -> str:
    title = f"{series.case_id} {series.metric} on {series.machine_id or 'unknown machine'}"
    body = [
        "<p class='small'><a href='../index.html'>&larr; all series</a></p>",
        f"<h1>{_e(title)}</h1>",
        "<figure>",
        plot(series),
        "<figcaption>Each dot is one run's median; grey lines mark where a release starts "
        "(backend, backend version, config, model digest, lmgauge version or commit "
        "changed); a red (regression) or green (improvement) line marks a change point, "
        "dashed amber a tentative one at the end of the series; the black line is the "
        "level between change points.</figcaption></figure>",
        "<h2>Change points</h2>",
    ]
    if series.changes:
        body.append("<ul>")
        body += [_change_item(series, c) for c in series.changes]
        body.append("</ul>")
    else:
        body.append("<p>No change point.</p>")
    body.append("<h2>Releases</h2><table><thead><tr><th>release</th><th>runs</th>")
    body.append("<th>median of runs</th><th>what it is</th></tr></thead><tbody>")
    for release in reversed(series.releases[-50:]):
        what = ", ".join(f"{k}={v}" for k, v in release.fields.items() if v)
        body.append(
            f"<tr><td class='mono'>{_e(release.label)}</td>"
            f"<td class='num'>{len(release.run_figures)}</td><td class='num'>"
            f"{_e(format_value(series.metric, statistics.median(release.run_figures)))}</td>"
            f"<td class='small mono'>{_e(what)}</td></tr>"
        )
    body.append("</tbody></table>")
    if len(series.releases) > 50:
        body.append(f"<p class='note'>The last 50 of {len(series.releases)} releases.</p>")
    return _page(title, body)


def latest_step(series: Series) -> str:
    """The last release against the one before: the ratio of their run medians."""
    if len(series.releases) < 2:
        return "first release"
    last, previous = series.releases[-1], series.releases[-2]
    ratio = statistics.median(last.run_figures) / statistics.median(previous.run_figures)
    return f"{describe_change(series.metric, ratio)} (x{ratio:.3f})"


def index_page(all_series: Sequence[Series]) -> str:
    body = ["<h1>lmgauge: runs over time</h1>"]
    recent = [
        (s, c)
        for s in all_series
        for c in s.changes
        if c.index >= len(s.releases) - 1 or c.tentative
    ]
    body.append("<h2>What changed since the last release</h2>")
    if recent:
        body.append("<ul>")
        for series, point in recent:
            link = f"<a href='series/{page_name(series)}'>{_e(series.case_id)}</a>"
            where = f"{_e(series.metric)} on {_e(series.machine_id or '?')}"
            body.append(_change_item(series, point, f" &mdash; {link} {where}"))
        body.append("</ul>")
    else:
        body.append("<p>No change point in the latest releases.</p>")
    machines = sorted({s.machine_id or "?" for s in all_series})
    for machine in machines:
        members = [s for s in all_series if (s.machine_id or "?") == machine]
        body.append(f"<h2>Machine {_e(machine)}</h2><table><thead><tr><th>case</th>")
        body.append("<th>metric</th><th>runs</th><th>releases</th><th>latest</th>")
        body.append("<th>last release vs the one before</th><th>last change point</th>")
        body.append("</tr></thead><tbody>")
        for s in members:
            last = s.changes[-1] if s.changes else None
            change = (
                f"<span class='{kind(s, last)}'>{_e(kind(s, last))} x{last.ratio:.3f} "
                f"at {_e(last.release)}</span>"
                if last
                else "none"
            )
            latest = format_value(s.metric, statistics.median(s.releases[-1].run_figures))
            body.append(
                f"<tr><td class='mono'><a href='series/{page_name(s)}'>{_e(s.case_id)}</a></td>"
                f"<td class='mono'>{_e(s.metric)}</td><td class='num'>{len(s.points)}</td>"
                f"<td class='num'>{len(s.releases)}</td><td class='num'>{_e(latest)}</td>"
                f"<td>{_e(latest_step(s))}</td><td>{change}</td></tr>"
            )
        body.append("</tbody></table>")
    return _page("lmgauge dashboard", body)


def build_site(all_series: Sequence[Series], out: Path) -> Path:
    """Write the site under ``out``; returns the path of its index page."""
    pages = out / "series"
    pages.mkdir(parents=True, exist_ok=True)
    for series in all_series:
        (pages / page_name(series)).write_text(series_page(series), encoding="utf-8")
    index = out / "index.html"
    index.write_text(index_page(all_series), encoding="utf-8")
    return index
