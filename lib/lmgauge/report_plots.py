"""The plots of the HTML report, as inline SVG text (matplotlib, no pyplot state).

Each function takes the report's cases and returns SVG, or None when the report has no
data for that plot (the page then says so in a line instead of drawing an empty frame).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from lmgauge.metrics import SAMPLE_METRICS

matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
BLUE, ORANGE, GREY = "#1f77b4", "#ff7f0e", "#7f7f7f"
UNITS = {
    "decode_tokens_per_s": ("decode (tokens/s)", 1.0),
    "prefill_tokens_per_s": ("prefill (tokens/s)", 1.0),
    "ttft_s": ("TTFT (ms)", 1000.0),
    "e2e_s": ("end to end (ms)", 1000.0),
    "itl_s": ("inter-token latency (ms)", 1000.0),
}

Cases = Mapping[str, Mapping[str, Any]]


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline in HTML


def _short(case_id: str) -> str:
    """Case ids are long; the backend is in the page header."""
    return case_id.split("-", 1)[1] if "-" in case_id else case_id


def _valid(case: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        s
        for s in case.get("samples", [])
        if s.get("ok") and not s.get("warmup") and not s.get("invalid_reason")
    ]


def against_baseline(case: Mapping[str, Any]) -> str | None:
    """The run's samples beside the baseline's, per metric, where the baseline is measured."""
    rows = {
        row["metric"]: row
        for row in case.get("verdicts", [])
        if row["metric"] in SAMPLE_METRICS and row.get("baseline_values")
    }
    if not rows:
        return None
    figure = Figure(figsize=(2.3 * len(rows), 2.6))
    for axes, (metric, row) in zip(
        figure.subplots(1, len(rows), squeeze=False)[0], rows.items(), strict=True
    ):
        title, scale = UNITS[metric]
        groups = [
            np.asarray(row["baseline_values"]) * scale,
            np.asarray(case["values"].get(metric, [])) * scale,
        ]
        for x, values, colour in zip((0, 1), groups, (GREY, BLUE), strict=True):
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            axes.scatter(x + jitter[: len(values)], values, s=12, color=colour, alpha=0.8)
            if len(values):
                axes.hlines(np.median(values), x - 0.25, x + 0.25, color=colour, linewidth=2)
        axes.set_xticks([0, 1], [f"baseline\n({row['baseline_provenance']})", "this run"])
        axes.set_xlim(-0.6, 1.6)
        axes.set_title(f"{title}\n{row['outcome']}", fontsize=9)
        axes.tick_params(labelsize=8)
    return _svg(figure)


def decode_vs_roofline(cases: Cases) -> str | None:
    names, measured, roofs = [], [], []
    for case_id, case in cases.items():
        decode = case.get("values", {}).get("decode_tokens_per_s")
        roof = case.get("derived", {}).get("decode_roofline", {}).get("tokens_per_s")
        if decode:
            names.append(_short(case_id))
            measured.append(float(np.median(decode)))
            roofs.append(roof)
    if not names:
        return None
    figure = Figure(figsize=(7.5, 0.5 + 0.45 * len(names)))
    axes = figure.subplots()
    y = np.arange(len(names))
    axes.barh(y, measured, color=BLUE, label="decode, median (measured)")
    for i, (value, roof) in enumerate(zip(measured, roofs, strict=True)):
        text = f"{value:.1f} t/s"
        if roof:
            axes.plot([roof, roof], [i - 0.4, i + 0.4], color=ORANGE, linewidth=2.5)
            text += f" = {value / roof:.0%} of the roofline"
        axes.text(value, i, " " + text, va="center", fontsize=8)
    axes.plot([], [], color=ORANGE, linewidth=2.5, label="bandwidth roofline (derived)")
    axes.set_yticks(y, names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("tokens/s")
    top = max([*measured, *(r for r in roofs if r)])
    axes.set_xlim(0, top * 1.45)
    axes.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2)
    return _svg(figure)


def latency_percentiles(cases: Cases) -> str | None:
    """p50/p90/p99 of TTFT and of the inter-token gaps, from the valid samples."""
    series: dict[str, dict[str, list[float]]] = {}
    for case_id, case in cases.items():
        valid = _valid(case)
        ttft = [s["ttft_s"] * 1000 for s in valid if s.get("ttft_s") is not None]
        gaps = [g * 1000 for s in valid for g in s.get("itl_s", [])]
        if ttft and gaps:
            series[_short(case_id)] = {"TTFT": ttft, "ITL": gaps}
    if not series:
        return None
    figure = Figure(figsize=(7.5, 0.8 + 0.5 * len(series)))
    for axes, kind in zip(figure.subplots(1, 2), ("TTFT", "ITL"), strict=True):
        y = np.arange(len(series))
        for offset, (q, colour) in zip(
            (-0.25, 0, 0.25), ((50, BLUE), (90, ORANGE), (99, GREY)), strict=True
        ):
            values = [np.percentile(v[kind], q) for v in series.values()]
            axes.barh(y + offset, values, height=0.25, color=colour, label=f"p{q}")
        axes.set_yticks(y, list(series) if kind == "TTFT" else [""] * len(series), fontsize=8)
        axes.invert_yaxis()
        axes.set_xlabel(f"{kind} (ms, measured)")
        axes.tick_params(labelsize=8)
    figure.legend(
        *figure.axes[0].get_legend_handles_labels(),
        fontsize=8,
        loc="upper center",
        ncols=3,
        bbox_to_anchor=(0.5, 1.08),
    )
    return _svg(figure)


def memory_vs_context(cases: Cases) -> str | None:
    lines: dict[str, list[tuple[int, float]]] = {}
    for case in cases.values():
        info, memory = case.get("case", {}), case.get("memory") or {}
        if info and memory.get("rss_bytes"):
            key = f"{info['label']} {info['quantization']}"
            lines.setdefault(key, []).append((info["context_tokens"], memory["rss_bytes"] / 1e9))
    lines = {k: sorted(v) for k, v in lines.items() if len(v) >= 2}
    if not lines:
        return None
    figure = Figure(figsize=(6, 3))
    axes = figure.subplots()
    for key, points in lines.items():
        contexts, gigabytes = zip(*points, strict=True)
        axes.plot(contexts, gigabytes, marker="o", label=key)
        for x, y in points:
            axes.annotate(
                f"{y:.2f}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                fontsize=8,
                ha="center",
            )
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted({x for p in lines.values() for x, _ in p}))
    axes.get_xaxis().set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1024:g}K")
    )
    axes.set_xlabel("context size (tokens)")
    axes.set_ylabel("resident memory (GB, measured)")
    low = min(y for p in lines.values() for _, y in p)
    axes.set_ylim(max(0, math.floor(low * 0.8)), None)
    axes.legend(fontsize=8)
    return _svg(figure)
