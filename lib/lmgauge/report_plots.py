"""The plots of the HTML report, as inline SVG text (matplotlib ``Figure``, no pyplot state).

Each function takes report data and returns SVG, or None when the report has nothing to
draw (the page then says so in one line instead of showing an empty frame). Every number
drawn is read from the report; figures the report marks derived are labelled derived.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

Cases = Mapping[str, Mapping[str, Any]]

# rc_context, not rcParams: the settings must not leak into other users of matplotlib.
STYLE: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",  # text stays text: a tenth of the size, and searchable
    "svg.hashsalt": "lmgauge",  # the same report gives the same page
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # matplotlib's long fallback list, on every text
    "font.size": 9.0,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9.0,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
BLUE, DARK, ORANGE, GREY = "#1f77b4", "#0b3d66", "#d95f02", "#8c8c8c"
RED, GREEN, AMBER = "#b00020", "#0a7a2f", "#8a6d00"
PERCENTILE_SHADES = {50: "#9ecae1", 90: "#3182bd", 99: "#08306b"}
OUTCOME_COLOUR = {"regression": RED, "breach": RED, "error": RED, "refused": RED}
OUTCOME_COLOUR |= {"improvement": GREEN, "pass": GREEN, "inconclusive": AMBER}

LABELS = {
    "decode_tokens_per_s": "decode speed",
    "prefill_tokens_per_s": "prefill speed",
    "ttft_s": "time to first token",
    "itl_s": "inter-token latency",
    "e2e_s": "end-to-end latency",
    "rss_bytes": "resident memory",
    "load_s": "model load time",
    "error_rate_ratio": "error rate",
}
# The sample metrics as plotted: seconds read better as milliseconds at these sizes.
PLOT_UNITS = {
    "decode_tokens_per_s": ("tokens/s", 1.0),
    "prefill_tokens_per_s": ("tokens/s", 1.0),
    "ttft_s": ("ms", 1000.0),
    "itl_s": ("ms", 1000.0),
    "e2e_s": ("ms", 1000.0),
}


def metric_label(metric: str) -> str:
    """A metric's name for people; the key itself stays beside it in the table."""
    if metric in LABELS:
        return LABELS[metric]
    if found := re.fullmatch(r"throughput_c(\d+)_tokens_per_s", metric):
        return f"throughput, {found[1]} in flight"
    return metric.replace("_per_", "/").replace("_", " ")


def short_id(case_id: str) -> str:
    """Case ids start with the backend, which the page header already names."""
    return case_id.split("-", 1)[1] if "-" in case_id else case_id


def valid_samples(case: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        s
        for s in case.get("samples") or []
        if s.get("ok") and not s.get("warmup") and not s.get("invalid_reason")
    ]


@contextmanager
def _styled() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    with _styled():
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # no XML prolog or doctype inside HTML
    # Several SVGs share the page: their element ids (axes_1, text_5...) would repeat, and
    # nothing refers to them; the referenced ones are content hashes without "_".
    text = re.sub(r' id="[A-Za-z][\w.]*_\d+"', "", text)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    # six decimals of a point are a millionth of a pixel: two are plenty, and a third smaller
    text = re.sub(r'\b(d|x|y|transform|width|height|viewBox)="[^"]*"', _rounded, text)
    return re.sub(r">\s+<", "><", text)


def _rounded(attribute: re.Match[str]) -> str:
    return re.sub(r"(\d+\.\d\d)\d+", r"\1", attribute[0])


def _fmt(value: float, unit: str) -> str:
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def _headline(row: Mapping[str, Any]) -> str:
    """The verdict's first words: '1.16x slower', 'no significant change'."""
    return str(row.get("verdict", "")).split(" (", 1)[0].split(":", 1)[0][:34]


def against_baseline(case: Mapping[str, Any]) -> str | None:
    """Per sample metric: the baseline's values beside this run's, where both exist."""
    rows = [
        row
        for row in case.get("verdicts", [])
        if row.get("metric") in PLOT_UNITS
        and row.get("baseline_values")
        and case.get("values", {}).get(row["metric"])
    ]
    if not rows:
        return None
    columns = min(len(rows), 5)
    lines = -(-len(rows) // columns)
    with _styled():
        figure = Figure(figsize=(2.5 * columns, 3.1 * lines))
        grid = figure.subplots(lines, columns, squeeze=False)
        for axes in grid.flat[len(rows) :]:
            axes.set_visible(False)
        for axes, row in zip(grid.flat, rows, strict=False):
            _strip(axes, row, case["values"][row["metric"]])
        figure.subplots_adjust(wspace=0.55, hspace=0.7)
    return _svg(figure)


def _strip(axes: Axes, row: Mapping[str, Any], run_values: Sequence[float]) -> None:
    metric = row["metric"]
    unit, scale = PLOT_UNITS[metric]
    groups = [np.asarray(row["baseline_values"]) * scale, np.asarray(run_values) * scale]
    colours = (GREY, BLUE)
    boxes = axes.boxplot(groups, positions=[0, 1], widths=0.5, showfliers=False, patch_artist=True)
    for patch, colour in zip(boxes["boxes"], colours, strict=True):
        patch.set(facecolor=colour, alpha=0.18, edgecolor=colour)
    for median, colour in zip(boxes["medians"], colours, strict=True):
        median.set(color=colour, linewidth=2)
    for x, (values, colour) in enumerate(zip(groups, colours, strict=True)):
        jitter = np.linspace(-0.13, 0.13, len(values)) if len(values) > 1 else np.zeros(1)
        axes.scatter(x + jitter, values, s=11, color=colour, zorder=3, linewidths=0)
    provenance = row.get("baseline_provenance") or "?"
    axes.set_xticks(
        [0, 1],
        [f"baseline\n{provenance}\nn={len(groups[0])}", f"this run\nmeasured\nn={len(groups[1])}"],
        fontsize=7.5,
    )
    axes.set_xlim(-0.55, 1.55)
    axes.set_ylabel(unit, labelpad=1)
    outcome = str(row.get("outcome", ""))
    axes.set_title(f"{metric_label(metric)}\n", fontsize=9)
    axes.text(
        0.5,
        1.02,
        f"{outcome}: {_headline(row)}",
        transform=axes.transAxes,
        ha="center",
        va="bottom",
        fontsize=8,
        color=OUTCOME_COLOUR.get(outcome, "#333333"),
        fontweight="bold" if row.get("failed") else "normal",
    )


def decode_vs_roofline(cases: Cases) -> str | None:
    """Measured decode speed per case as bars; the derived roofline marked on each row."""
    names: list[str] = []
    medians: list[float] = []
    spans: list[tuple[float, float]] = []
    roofs: list[float | None] = []
    for case_id, case in cases.items():
        decode = (case.get("values") or {}).get("decode_tokens_per_s")
        if not decode:
            continue
        roofline = (case.get("derived") or {}).get("decode_roofline") or {}
        names.append(short_id(case_id))
        medians.append(float(np.median(decode)))
        spans.append((min(decode), max(decode)))
        roofs.append(roofline.get("tokens_per_s"))
    if not names:
        return None
    with _styled():
        figure = Figure(figsize=(9.5, 0.9 + 0.55 * len(names)))
        axes = figure.subplots()
        y = np.arange(len(names))
        low = [m - lo for m, (lo, _) in zip(medians, spans, strict=True)]
        high = [hi - m for m, (_, hi) in zip(medians, spans, strict=True)]
        axes.barh(y, medians, height=0.6, color=BLUE, label="decode speed, median (measured)")
        axes.errorbar(medians, y, xerr=[low, high], fmt="none", ecolor=DARK, capsize=3)
        top = max([hi for _, hi in spans] + [r for r in roofs if r])
        for i, (median, roof) in enumerate(zip(medians, roofs, strict=True)):
            text = f"{median:.1f} t/s" + (f" ({median / roof:.0%} of roofline)" if roof else "")
            # inside the bar where it fits, else after the whisker: never over the ground
            if median > top * 0.45:
                axes.text(top * 0.01, i, text, va="center", fontsize=8, color="white")
            else:
                axes.text(spans[i][1] + top * 0.012, i, text, va="center", fontsize=8)
            if roof:
                axes.plot([roof, roof], [i - 0.38, i + 0.38], color=ORANGE, linewidth=2.5)
                axes.text(
                    roof + top * 0.012,
                    i,
                    f"{roof:.0f} t/s roofline (derived)",
                    va="center",
                    fontsize=8,
                    color=ORANGE,
                )
        if any(roofs):
            axes.plot([], [], color=ORANGE, linewidth=2.5, label="bandwidth roofline (derived)")
        axes.set_yticks(y, names)
        axes.invert_yaxis()
        axes.set_xlabel("decode tokens/s   (whiskers: slowest to fastest sample)")
        axes.set_xlim(0, top * 1.42)
        axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, frameon=False)
    return _svg(figure)


def latency_percentiles(cases: Cases) -> str | None:
    """p50/p90/p99 of TTFT and of the inter-token gaps, from the valid samples only."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for case_id, case in cases.items():
        valid = valid_samples(case)
        ttft = [s["ttft_s"] * 1000 for s in valid if s.get("ttft_s") is not None]
        gaps = [g * 1000 for s in valid for g in s.get("itl_s") or []]
        if ttft or gaps:
            series[short_id(case_id)] = (ttft, gaps)
    if not series:
        return None
    with _styled():
        figure = Figure(figsize=(10, 0.7 + 0.75 * len(series)))
        panels = figure.subplots(1, 2, sharey=True)
        y = np.arange(len(series))
        for axes, index, title in zip(
            panels, (0, 1), ("time to first token (ms)", "inter-token gap (ms)"), strict=True
        ):
            _percentile_bars(axes, y, [v[index] for v in series.values()])
            axes.set_xlabel(title + ", measured")
        labels = [
            f"{name}\n{len(ttft)} requests, {len(gaps)} gaps"
            for name, (ttft, gaps) in series.items()
        ]
        panels[0].set_yticks(y, labels)
        panels[0].invert_yaxis()
        figure.subplots_adjust(wspace=0.08)
    return _svg(figure)


def _percentile_bars(axes: Axes, y: np.ndarray, groups: list[list[float]]) -> None:
    # the scale is set by the largest p99, not the largest value: one stall would squash it
    top = max((float(np.percentile(g, 99)) for g in groups if g), default=1.0)
    for offset, (q, colour) in zip((-0.26, 0.0, 0.26), PERCENTILE_SHADES.items(), strict=True):
        for row, values in zip(y, groups, strict=True):
            if not values:
                continue
            value = float(np.percentile(values, q))
            axes.barh(row + offset, value, height=0.25, color=colour)
            digits = 0 if value >= 100 else 1
            axes.text(
                value + top * 0.01,
                row + offset,
                f"p{q} {value:.{digits}f} ms",
                va="center",
                fontsize=7.5,
            )
    axes.set_xlim(0, top * 1.3)
    axes.yaxis.set_minor_locator(NullLocator())


def memory_vs_context(cases: Cases) -> str | None:
    """Resident memory (measured) against context size, one line per model and
    quantization; beside it the weights + KV cache the report derives from the shape."""
    lines: dict[str, list[tuple[int, float, float | None]]] = {}
    for case in cases.values():
        info, memory = case.get("case") or {}, case.get("memory") or {}
        if info.get("context_tokens") and memory.get("rss_bytes"):
            model, kv = memory.get("model_bytes"), memory.get("kv_cache_bytes")
            derived = (model + kv) / 1e9 if model and kv else None
            key = f"{info.get('label', '?')} {info.get('quantization', '')}".strip()
            point = (int(info["context_tokens"]), memory["rss_bytes"] / 1e9, derived)
            lines.setdefault(key, []).append(point)
    lines = {key: sorted(points) for key, points in lines.items() if len(points) >= 2}
    if not lines:
        return None
    with _styled():
        figure = Figure(figsize=(7, 3.6))
        axes = figure.subplots()
        colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        any_derived = False
        for (key, points), colour in zip(lines.items(), colours, strict=False):
            contexts = [p[0] for p in points]
            axes.plot(contexts, [p[1] for p in points], marker="o", color=colour, label=key)
            # with several lines the labels of every point would pile up: the last only
            _annotate(axes, points if len(lines) <= 2 else points[-1:], colour)
            derived = [p[2] for p in points if p[2] is not None]
            if len(derived) == len(points):
                axes.plot(contexts, derived, linestyle="--", color=colour, alpha=0.7)
                any_derived = True
        # line style, not colour, says measured or derived: one legend entry each
        axes.plot([], [], color=GREY, marker="o", label="solid: resident memory (measured)")
        if any_derived:
            axes.plot(
                [], [], color=GREY, linestyle="--", label="dashed: weights + KV cache (derived)"
            )
        ticks = sorted({p[0] for points in lines.values() for p in points})
        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_locator(FixedLocator(ticks))
        axes.xaxis.set_minor_locator(NullLocator())
        axes.xaxis.set_major_formatter(_formatter(lambda x: f"{x:,.0f}"))
        axes.set_xlabel("context size (tokens, log scale)")
        axes.set_ylabel("memory (GB)")
        highest = max(p[1] for points in lines.values() for p in points)
        axes.set_ylim(0, highest * 1.15)
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        axes.grid(axis="y", alpha=0.3)
    return _svg(figure)


def _annotate(axes: Axes, points: list[tuple[int, float, float | None]], colour: str) -> None:
    for x, y, _ in points:
        axes.annotate(
            f"{y:.2f} GB",
            (x, y),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            fontsize=8,
            color=colour,
        )


def _formatter(text: Callable[[float], str]) -> matplotlib.ticker.FuncFormatter:
    return matplotlib.ticker.FuncFormatter(lambda x, _position: text(x))
