"""Speed of ``lmgauge dashboard`` on a large store, reported by pytest-benchmark, never
asserted.

Target (issue 17): 10,000 runs build in seconds, not minutes. The store here is what
``Store.series`` returns for 10,000 runs on two machines, each run measuring two cases
and two metrics (40,000 points in 8 series of 5,000 runs, 3 runs per release, a few
steps): the time is change-point detection plus writing the site, not the database.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pytest_benchmark.fixture import BenchmarkFixture

from lmgauge.dashboard import build_site
from lmgauge.history_cli import analyse
from lmgauge.store import StoredSeriesPoint
from lmgauge.testing.reports import series_point

RUNS = 10_000
CASES = ("llamacpp-qwen3-0.6b-Q4_K_M-ctx4096", "llamacpp-qwen3-7b-Q4_K_M-ctx4096")
METRICS = ("decode_tokens_per_s", "ttft_s")


def store_points() -> list[StoredSeriesPoint]:
    rng = np.random.default_rng(0)
    found = []
    for run_id in range(RUNS):
        machine, order = divmod(run_id, RUNS // 2)
        release = order // 3
        level = 1.0 + 0.2 * (release >= 500) - 0.1 * (release >= 1200)
        for case_id in CASES:
            for metric in METRICS:
                figure = level * math.exp(rng.normal(0, 0.10))
                found.append(
                    series_point(
                        run_id=run_id,
                        started_utc=f"2026-01-01T00:00:00+00:00#{order:06d}",
                        machine_id=f"machine-{machine}",
                        release=release,
                        case_id=case_id,
                        metric=metric,
                        values=(figure * 0.99, figure, figure * 1.01),
                    )
                )
    return found


def test_dashboard_of_10000_runs(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    points = store_points()

    def build() -> Path:
        return build_site(analyse(points), tmp_path / "site")

    index = benchmark.pedantic(build, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    benchmark.extra_info["runs"] = RUNS
    benchmark.extra_info["series"] = len(CASES) * len(METRICS) * 2
    assert index.exists()
    assert len(list((tmp_path / "site" / "series").glob("*.html"))) == 8
