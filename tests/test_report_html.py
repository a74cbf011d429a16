"""The HTML report: one offline page, failures first, every figure labelled; and a
screenshot of it in headless Chromium (the Debian package), checked for content.

``data/report-regression.json`` is a real report: the embedded engine (qwen3-0.6b shape)
run with one thread against a baseline recorded with two, so it holds regressions."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image

from lmgauge.report_html import render_html

DATA = Path(__file__).parent / "data" / "report-regression.json"
CASE = "llamacpp-qwen3-0.6b-Q4_K_M-ctx4096"


@pytest.fixture
def report() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text())
    return data


def with_contexts(report: dict[str, Any]) -> dict[str, Any]:
    """The same case at two more context sizes, with more memory each (for the memory plot)."""
    case = report["cases"][CASE]
    for context, rss in ((8192, 1.8e9), (16384, 2.7e9)):
        other = copy.deepcopy(case)
        other["case"]["context_tokens"] = context
        other["memory"]["rss_bytes"] = rss
        report["cases"][CASE.replace("ctx4096", f"ctx{context}")] = other
    return report


def test_the_page_is_self_contained(report: dict[str, Any]) -> None:
    page = render_html(with_contexts(report))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    assert page.count("<svg") == 3 + 3  # one baseline plot per case; roofline, latency, memory


def test_failures_come_first_and_every_verdict_is_a_row(report: dict[str, Any]) -> None:
    page = render_html(report)
    failures = page.index("<h2>Failures</h2>")
    assert failures < page.index("<h2>Verdicts</h2>")
    assert "5 failed." in page
    assert page.count("<tr class='regression'>") == 5
    assert page.count("<tr class=") == len(report["cases"][CASE]["verdicts"])
    assert "1.16x slower (significant, p=0.0127)" in page


def test_derived_and_measured_figures_are_labelled(report: dict[str, Any]) -> None:
    page = render_html(report)
    assert "bandwidth roofline (derived)" in page
    assert "decode, median (measured)" in page
    assert "The roofline is derived" in page
    assert "synthetic weights" in page


def test_text_from_the_report_is_escaped(report: dict[str, Any]) -> None:
    report["cases"]["evil"] = {"error": "<script>alert(1)</script>", "verdicts": []}
    page = render_html(report)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_plots_without_data_are_a_line_not_an_empty_frame(report: dict[str, Any]) -> None:
    page = render_html(report)  # one context size only
    assert "Memory against context needs one model measured at two context sizes" in page
    for row in report["cases"][CASE]["verdicts"]:
        row["baseline_values"] = []
    assert "No case has a measured baseline to plot against" in render_html(report)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium not found: install the Debian package chromium")
    return found


def test_screenshot_of_the_page_shows_tables_and_plots(
    report: dict[str, Any], tmp_path: Path
) -> None:
    chromium = _chromium()
    page = tmp_path / "report.html"
    page.write_text(render_html(with_contexts(report)), encoding="utf-8")
    shot = tmp_path / "report.png"
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1280,4200",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(image.imread(shot))[:, :, :3]
    assert pixels.shape[:2] == (4200, 1280)
    white = np.all(pixels > 0.97, axis=2)
    assert white.mean() < 0.95  # text, tables and plots, not a blank page
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    plot_blue = (blue > 0.6) & (red < 0.3) & (green > 0.35) & (green < 0.6)  # #1f77b4 bars
    failure_red = (red > 0.6) & (green < 0.2) & (blue < 0.25)  # the failures in #b00020
    assert plot_blue.sum() > 2000, "no plot bars in the screenshot"
    assert failure_red.sum() > 500, "the failures are not shown in red"
