"""Ctrl-C in the middle of a run: the report on disk keeps every sample measured before
the interrupt, says the run was interrupted, and renders with ``lmgauge report``. Real
embedded engine (qwen3-0.6b shape), real SIGINT to a real pytest process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmgauge.cli import main
from lmgauge.report import load_report
from lmgauge.synthetic import cache_dir

BENCHMARKS = Path(__file__).parents[1] / "benchmarks" / "test_serving.py"


def _measured_samples(reports: Path) -> int:
    for path in reports.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # never expected: the writes are atomic
            raise AssertionError(f"{path} is not valid JSON mid-run") from None
        return sum(len(c.get("samples", [])) for c in data["cases"].values())
    return 0


def test_sigint_mid_run_keeps_every_measured_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(BENCHMARKS),
        "-k",
        "qwen3-0.6b and decode",
        "--lmgauge-backend=llamacpp",
        f"--lmgauge-report-dir={reports}",
        "--lmgauge-samples=200",
        "--lmgauge-prompt-tokens=16",
        "--lmgauge-max-tokens=8",
        "-p",
        "no:cacheprovider",
    ]
    env = {**os.environ, "LMGAUGE_CACHE_DIR": str(cache_dir().parent)}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while _measured_samples(reports) < 4:
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "no samples in the report after 120 s"
            time.sleep(0.2)
        before = _measured_samples(reports)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0].decode()
    finally:
        process.kill()
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    report_path = next(reports.glob("*.json"))
    report = load_report(report_path)
    assert report["status"] == "interrupted"
    (case,) = report["cases"].values()
    assert len(case["samples"]) >= before
    assert all(s["ok"] for s in case["samples"])
    assert f"report (interrupted, {len(case['samples'])} samples of 1 case(s))" in output
    assert main(["report", str(report_path)]) == 0
    assert "samples measured | - | no verdict (the run interrupted" in capsys.readouterr().out
