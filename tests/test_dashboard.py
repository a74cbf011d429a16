"""The dashboard: an offline static site of a store's series, with the change points and
what changed with them; and a screenshot of a series page in headless Chromium."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from lmgauge.cli import main
from lmgauge.dashboard import build_site, page_name
from lmgauge.history_cli import analyse
from lmgauge.store import Store, StoredSeriesPoint
from lmgauge.testing.reports import series_point

sys.path.insert(0, str(Path(__file__).parent))  # the tests' shared helper modules
from chromium import screenshot
from test_history_cli import history_reports

CASE = "llamacpp-qwen3-0.6b-Q4_K_M-ctx4096"


def points(
    machine: str = "vm-1",
    releases: int = 30,
    step_at: int = 15,
    step: float = -0.2,
    case_id: str = CASE,
    seed: int = 0,
) -> list[StoredSeriesPoint]:
    rng = np.random.default_rng(seed)
    found = []
    for release in range(releases):
        level = 40.0 * (1 + step if release >= step_at else 1.0)
        for run in range(3):
            run_id = 3 * release + run
            figure = level * math.exp(rng.normal(0, 0.10))
            found.append(
                series_point(
                    run_id=run_id,
                    started_utc=f"2026-11-01T{run_id // 60:02d}:{run_id % 60:02d}:00+00:00",
                    machine_id=machine,
                    release=release,
                    case_id=case_id,
                    metric="decode_tokens_per_s",
                    values=tuple(figure * (1 + 0.02 * rng.standard_normal(6))),
                )
            )
    return found


@pytest.fixture
def site(tmp_path: Path) -> Path:
    series = analyse(
        [
            *points("vm-1"),
            *points("vm-2", step_at=28, step=-0.35, seed=1),  # a change at the very end
            *points("vm-1", step=0.0, case_id="llamacpp-qwen3-7b-Q4_K_M-ctx4096", seed=2),
        ]
    )
    return build_site(series, tmp_path / "site")


def test_the_site_needs_no_network_and_no_script(site: Path) -> None:
    pages = [site, *sorted((site.parent / "series").glob("*.html"))]
    assert len(pages) == 4  # the index and one page per case, metric and machine
    for path in pages:
        page = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
        assert "<script" not in page
        assert "<link" not in page


def test_a_series_page_shows_the_change_point_with_its_effect(site: Path) -> None:
    (series,) = [s for s in analyse(points("vm-1")) if s.machine_id == "vm-1" and s.case_id == CASE]
    page = (site.parent / "series" / page_name(series)).read_text(encoding="utf-8")
    assert page.count("<svg") == 1
    (change,) = series.changes
    assert change.index == 15
    assert f"x{change.ratio:.3f}" in page
    assert "REGRESSION at release #15 0.3.15" in page
    assert "backend_version: 0.3.14 -&gt; 0.3.15" in page
    assert page.count("stroke='#b00020'") == 1  # one change-point line


def test_the_landing_page_says_what_changed_since_the_last_release(site: Path) -> None:
    page = site.read_text(encoding="utf-8")
    recent = page[page.index("What changed since the last release") : page.index("Machine vm-1")]
    assert "tentative at release #28 0.3.28" in recent
    assert "vm-2" in recent
    assert "0.3.15" not in recent  # an older change is in the tables, not in the news
    assert "<h2>Machine vm-1</h2>" in page
    assert "<h2>Machine vm-2</h2>" in page
    assert "regression x0.772 at #15 0.3.15" in page  # injected: x0.80


def test_the_command_builds_the_site_from_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store.open(url) as store:
        for path in history_reports(tmp_path, releases=8, step_at=4):
            store.ingest_report(path)
    assert main(["dashboard", "--store", url, "--out", str(tmp_path / "site")]) == 0
    assert "index.html" in capsys.readouterr().out
    assert len(list((tmp_path / "site" / "series").glob("*.html"))) == 1
    assert main(["dashboard", "--store", url, "--out", str(tmp_path / "x"), "-k", "none"]) == 2


def test_screenshot_of_a_series_page_shows_the_runs_and_the_change(
    site: Path, tmp_path: Path
) -> None:
    (series,) = [s for s in analyse(points("vm-1"))]
    page = site.parent / "series" / page_name(series)
    shot = tmp_path / "series.png"
    pixels = screenshot(page, shot, width=1280, height=900)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    run_blue = (blue > 0.6) & (red < 0.3) & (green > 0.35) & (green < 0.6)  # #1f77b4
    change_red = (red > 0.6) & (green < 0.2) & (blue < 0.25)  # #b00020
    assert run_blue.sum() > 300, "no runs in the screenshot"
    assert change_red.sum() > 200, "no change point in the screenshot"
