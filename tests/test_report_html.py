"""The HTML report: one offline page, failures first, every figure labelled measured or
derived; and a screenshot of it in headless Chromium (the Debian package), checked for
content.

The fixtures are real reports of the embedded engine (qwen3-0.6b shape, synthetic weights):
``report-regression.json`` ran with one thread against a baseline recorded with two, so it
holds regressions; ``report-contexts.json`` measured contexts 2048/8192/16384 with no
baseline (the per-request records of its concurrency runs trimmed away)."""

from __future__ import annotations

import json
import re
import sys
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmgauge import report_plots
from lmgauge.report_html import render_html

sys.path.insert(0, str(Path(__file__).parent))  # the tests' shared helper modules
from chromium import screenshot

DATA = Path(__file__).parent / "data"
CASE = "llamacpp-qwen3-0.6b-Q4_K_M-ctx4096"
EVIL = "<script>alert(1)</script>"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture
def regression() -> dict[str, Any]:
    return load("report-regression.json")


@pytest.fixture
def contexts() -> dict[str, Any]:
    return load("report-contexts.json")


@pytest.mark.parametrize("name", ["report-regression.json", "report-contexts.json"])
def test_the_page_needs_no_network_and_no_other_file(name: str) -> None:
    page = render_html(load(name))
    assert not re.search(r"""(src|href|xlink:href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?(https?:)?//""", page, re.I)
    assert "@import" not in page
    assert "<link" not in page
    assert "<script" not in page  # nothing to run, nothing to fetch
    assert page.count("<svg") == 3  # three plots drawn, the fourth has no data in either


def test_failures_come_first_and_every_verdict_is_a_row(regression: dict[str, Any]) -> None:
    page = render_html(regression)
    verdicts = regression["cases"][CASE]["verdicts"]
    assert page.index("<h2>Failures</h2>") < page.index("<h2>Verdicts</h2>")
    assert "✗ 5 failed.</b> 11 verdicts: 5 regressions, 6 reported without a pass/fail." in page
    failures = page[page.index("<h2>Failures</h2>") : page.index("<h2>Verdicts</h2>")]
    assert failures.count("<li>") == 5
    assert "decode speed: 1.16x slower (significant, p=0.0127): regression" in failures
    assert page.count("<td class='metric'>") == len(verdicts)
    assert page.count("<tr class='fail'>") == 5
    for row in verdicts:
        assert f"<div class='small mono'>{row['metric']}</div>" in page
        assert row["measured"] in page
    assert "✗ regression</span>" in page  # the outcome in words, not only in red


def test_a_run_with_nothing_failed_says_so(contexts: dict[str, Any]) -> None:
    page = render_html(contexts)
    assert "✓ Nothing failed.</b> 33 verdicts: 33 without a baseline." in page
    assert "<h2>Failures</h2>" not in page
    assert "Record baselines with --lmgauge-update-baselines" in page


def test_text_from_the_report_is_escaped(regression: dict[str, Any]) -> None:
    regression["cases"][EVIL] = {"error": EVIL, "verdicts": []}
    regression["cases"][CASE]["verdicts"][0]["verdict"] = EVIL
    regression["cases"][CASE]["derived"]["decode_roofline"]["source"] = EVIL
    regression["messages"] = [EVIL]
    regression["profile"] = EVIL
    page = render_html(regression)
    assert "<script" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 6


def test_skipped_and_errored_cases_show_their_reason(regression: dict[str, Any]) -> None:
    regression["cases"]["llamacpp-qwen3-32b-Q4_K_M-ctx4096"] = {
        "skipped": "needs 20 GB of memory, the host has 25 GB & 8 GB free",
        "verdicts": [],
    }
    regression["cases"]["llamacpp-qwen3-4b-Q4_K_M-ctx4096"] = {
        "error": "the server closed the connection",
        "verdicts": [],
    }
    regression["status"] = "interrupted"
    page = render_html(regression)
    assert "skipped</span> needs 20 GB of memory, the host has 25 GB &amp; 8 GB free" in page
    assert "error</span> the server closed the connection" in page
    assert "✗ 6 failed." in page
    assert "1 case skipped." in page
    assert "The run was interrupted" in page


def test_derived_figures_are_labelled_derived(contexts: dict[str, Any]) -> None:
    page = render_html(contexts)
    source = contexts["cases"][f"{CASE[:-4]}2048"]["derived"]["decode_roofline"]["source"]
    assert "123 t/s roofline (derived)" in page  # on the plot, beside each marker
    assert "bandwidth roofline (derived)" in page  # in its legend
    assert "decode speed, median (measured)" in page
    assert "the roofline, a <b>derived</b> figure" in page
    assert escape(source) in page  # where it came from, word for word
    assert "weights + KV cache (derived)" in page
    assert "resident memory (measured)" in page


def test_synthetic_weights_are_said_only_when_they_were_used(regression: dict[str, Any]) -> None:
    assert "<b>Synthetic weights.</b>" in render_html(regression)
    regression["cases"][CASE]["environment"]["synthetic_weights"] = False
    assert "Synthetic weights" not in render_html(regression)


def test_plots_without_data_are_a_line_not_an_empty_frame(
    regression: dict[str, Any], contexts: dict[str, Any]
) -> None:
    assert "Not drawn: it needs one model and quantization measured at two" in render_html(
        regression
    )
    assert "Not drawn: no case has a baseline with its own samples" in render_html(contexts)
    empty = dict(regression, cases={})
    page = render_html(empty)
    assert "<svg" not in page
    assert page.count("Not drawn:") == 4
    assert "No case was measured." in page


def test_latency_percentiles_use_only_the_valid_samples(regression: dict[str, Any]) -> None:
    case = regression["cases"][CASE]
    valid = report_plots.valid_samples(case)
    assert len(valid) == 5
    assert all(not s["warmup"] for s in valid)
    case["samples"][0]["warmup"] = True
    case["samples"][0]["ttft_s"] = 99.0  # a slow warm-up must not reach the p99
    case["samples"][1]["invalid_reason"] = "cache hit"
    case["samples"][1]["ttft_s"] = 0.001
    expected = np.percentile([s["ttft_s"] * 1000 for s in report_plots.valid_samples(case)], 99)
    svg = report_plots.latency_percentiles(regression["cases"])
    assert svg is not None
    assert f"p99 {expected:.0f} ms" in svg
    assert "99000" not in svg
    assert "4 requests" in svg


def test_screenshot_of_the_page_shows_the_failures_and_the_plots(
    regression: dict[str, Any], tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(regression), encoding="utf-8")
    shot = tmp_path / "report.png"
    pixels = screenshot(page, shot, width=1280, height=2400)
    assert pixels.shape == (2400, 1280, 3)
    background = np.all(pixels > 0.97, axis=2)
    assert background.mean() < 0.93, "the page is (almost) blank"
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    grey = (np.ptp(pixels, axis=2) < 0.08) | background
    assert (~grey).mean() > 0.01, "no colour at all: neither badges nor plots"
    # #1f77b4: this run's samples in the plots against the baseline
    plot_blue = (blue > 0.6) & (red < 0.3) & (green > 0.35) & (green < 0.6)
    # #b00020: the failure badges and the red edge of each failed row
    failure_red = (red > 0.6) & (green < 0.2) & (blue < 0.25)
    assert plot_blue.sum() > 300, "no plot in the screenshot"
    assert failure_red.sum() > 1000, "the failures are not shown"
