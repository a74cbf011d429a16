"""What the lmgauge plugin costs a project that has no lmgauge tests: a small unrelated
suite run by pytest with the plugin and without it (``-p no:lmgauge``), in interleaved
pairs in one session, so the machine's drift falls on both sides alike. The figure is the
median of the paired differences in wall time; the target is under 50 ms."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

TARGET_S = 0.050
PAIRS = 9
SUITE = """
import pytest


@pytest.mark.parametrize("case", range(20))
def test_theirs(case):
    assert case >= 0
"""


def _wall_s(folder: Path, *extra: str) -> float:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout + done.stderr
    return elapsed


def _paired_differences_s(folder: Path) -> list[float]:
    differences = []
    for index in range(PAIRS):
        # Alternate which side goes first: a slow moment of the machine then falls on
        # "with" as often as on "without".
        if index % 2:
            without = _wall_s(folder, "-p", "no:lmgauge")
            with_plugin = _wall_s(folder)
        else:
            with_plugin = _wall_s(folder)
            without = _wall_s(folder, "-p", "no:lmgauge")
        differences.append(with_plugin - without)
    return differences


def test_plugin_overhead_on_an_unrelated_suite(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    (tmp_path / "test_theirs.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    _wall_s(tmp_path)  # warm the file cache and the bytecode
    differences = _paired_differences_s(tmp_path)
    median_s = statistics.median(differences)
    if median_s > TARGET_S:  # a busy moment of a shared machine: confirm before failing
        differences = _paired_differences_s(tmp_path)
        median_s = min(median_s, statistics.median(differences))
    record_property("plugin_overhead_median_s", median_s)
    print(
        f"\nlmgauge plugin overhead on an unrelated 20-test suite: {median_s * 1000:.1f} ms "
        f"(median of {PAIRS} interleaved pairs; differences "
        f"{', '.join(f'{d * 1000:.0f}' for d in differences)} ms)"
    )
    assert median_s < TARGET_S, f"the plugin adds {median_s * 1000:.0f} ms (target < 50 ms)"
