"""Many runs at once, through the ``lmgauge`` command: ``diff --a ... --b ...`` judged
against the run-to-run noise of the runs, and ``trend --store`` with change points, on a
real SQLite results store built from generated reports."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmgauge.cli import main
from lmgauge.diff import compare_runs, diff_report_sets
from lmgauge.history_cli import analyse, points_from_reports
from lmgauge.store import Store

CASE = "llamacpp-qwen3-0.6b-Q4_K_M-ctx4096"


def make_report(
    seed: int, level: float, *, version: str = "0.3.1", minute: int = 0, run_sd: float = 0.10
) -> dict[str, Any]:
    """One run: 8 decode samples (2% apart) around ``level`` times a run factor with the
    run-to-run sd of this machine (10% on run medians)."""
    rng = np.random.default_rng(seed)
    run_level = level * math.exp(rng.normal(0, run_sd))
    hours, minutes = divmod(minute, 60)
    return {
        "format": "lmgauge-report",
        "version": 1,
        "status": "complete",
        "started_utc": f"2026-11-{1 + hours // 24:02d}T{hours % 24:02d}:{minutes:02d}:00+00:00",
        "profile": "linux-x86_64-2c-24gb",
        "machine_id": "vm-1",
        "lmgauge_version": "0.1.0",
        "git_commit": "abc1234",
        "backend": {"name": "llamacpp"},
        "host": {"cpu": "x86_64"},
        "cases": {
            CASE: {
                "environment": {
                    "model": "qwen3-0.6b",
                    "model_digest": "sha256:aaa",
                    "quantization": "Q4_K_M",
                    "context_tokens": 4096,
                    "backend": "llamacpp",
                    "backend_version": version,
                },
                "values": {
                    "decode_tokens_per_s": list(run_level * (1 + 0.02 * rng.standard_normal(8)))
                },
            }
        },
    }


def write(tmp_path: Path, name: str, report: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def test_a_20_percent_step_between_sets_of_runs_is_a_regression() -> None:
    a = [make_report(seed, 40.0) for seed in range(5)]
    b = [make_report(100 + seed, 32.0) for seed in range(5)]
    (row,) = diff_report_sets(a, b).rows
    assert row.outcome == "regression"
    assert row.ratio == pytest.approx(0.8, abs=0.08)
    assert "5 vs 5 runs" in row.verdict
    assert "slower" in row.verdict


@pytest.mark.parametrize("seed", range(5))
def test_an_a_a_split_is_no_regression(seed: int) -> None:
    runs = [make_report(10 * seed + i, 40.0) for i in range(10)]
    (row,) = diff_report_sets(runs[:5], runs[5:]).rows
    assert row.outcome in ("pass", "inconclusive")


def test_a_run_with_many_samples_but_the_machines_noise_is_not_news() -> None:
    # Per-sample tests call a 10% difference between two single runs significant; run
    # medians with 10% run-to-run noise do not, from three runs a side.
    a = [make_report(seed, 40.0) for seed in (1, 2, 3)]
    b = [make_report(seed, 40.0) for seed in (4, 5, 6)]
    row = compare_runs(CASE, "decode_tokens_per_s", [40.0, 44.0, 37.0], [41.0, 36.5, 43.0], 0.05)
    assert row.outcome == "inconclusive"
    assert "3 vs 3 runs" in row.verdict
    assert diff_report_sets(a, b).regressions == []


def test_one_run_on_a_side_says_the_noise_is_unknown() -> None:
    a = [make_report(1, 40.0)]
    b = [make_report(seed, 32.0) for seed in (2, 3, 4)]
    (row,) = diff_report_sets(a, b).rows
    assert "one run on side A: run-to-run noise unknown, per-sample test only" in row.verdict


def test_the_command_exits_1_on_a_regression_and_0_on_an_a_a_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r1 = [write(tmp_path, f"r1-{i}.json", make_report(i, 40.0)) for i in range(4)]
    r2 = [write(tmp_path, f"r2-{i}.json", make_report(50 + i, 32.0)) for i in range(4)]
    r3 = [write(tmp_path, f"r3-{i}.json", make_report(80 + i, 40.0)) for i in range(4)]
    args = ["diff", "--a", *map(str, r1), "--b", *map(str, r2)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out
    assert "4 vs 4 runs" in out
    assert main(["diff", "--a", *map(str, r1), "--b", *map(str, r3)]) == 0
    assert "no regression" in capsys.readouterr().out
    assert main(["diff", str(r1[0]), str(r2[0])]) in (0, 1)  # the two-report form still works
    assert main(["diff", str(r1[0])]) == 2


def history_reports(tmp_path: Path, step_at: int = 12, releases: int = 24) -> list[Path]:
    paths = []
    for release in range(releases):
        level = 40.0 if release < step_at else 32.0
        version = f"0.3.{release}"
        for run in range(3):
            minute = 10 * (3 * release + run)
            report = make_report(1000 + 3 * release + run, level, version=version, minute=minute)
            paths.append(write(tmp_path, f"run-{release:02d}-{run}.json", report))
    return paths


def test_trend_over_a_store_finds_the_step_and_what_changed_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store.open(url)
    for path in history_reports(tmp_path):
        assert store.ingest_report(path)
    store.close()
    code = main(["trend", "--store", url, "-k", "qwen3", "--metric", "decode_tokens_per_s"])
    assert code == 0
    out = capsys.readouterr().out
    assert "72 runs in 24 releases" in out
    assert "REGRESSION at release #12 0.3.12 @abc1234: 1.18x slower (x0.850, 95% [0.787" in out
    assert "with: backend_version: 0.3.11 -> 0.3.12" in out
    assert "1 series, 1 change point(s), 1 regression(s)" in out


def test_a_report_list_is_a_small_store(tmp_path: Path) -> None:
    (series,) = analyse(points_from_reports(history_reports(tmp_path)))
    assert len(series.releases) == 24
    (change,) = series.changes
    assert change.index == 12
    assert change.low < 0.8 < change.high  # injected: 0.8; measured 0.85 in this draw
    assert series.direction(change) == "regression"
