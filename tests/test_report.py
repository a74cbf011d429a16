"""Run reports: written after every change, valid JSON at every moment, versioned."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmgauge.backends.base import LoadResult, MemoryReport
from lmgauge.errors import ConfigError
from lmgauge.measure import Sample
from lmgauge.report import FORMAT, VERSION, ReportWriter, Row, check_writable, load_report
from lmgauge.report_markdown import render_markdown, write_step_summary
from lmgauge.runner import Case, CaseRun

CASE = Case("llamacpp", "qwen3-0.6b", "Q4_K_M", 4096)


def sample(i: int, itl_s: float = 0.02) -> Sample:
    return Sample(
        requested_tokens=8,
        ok=True,
        output_tokens=8,
        prompt_tokens=16,
        ttft_s=0.1 + i / 1000,
        itl_s=(itl_s,) * 7,
        e2e_s=0.1 + 7 * itl_s,
    )


def writer(tmp_path: Path) -> ReportWriter:
    return ReportWriter.start(
        tmp_path,
        backend={"name": "llamacpp", "requested": "auto"},
        profile="linux-x86_64-2c-24gb",
        host={"cpu": "Test CPU"},
        run={"tolerance": 0.05},
    )


def test_a_report_is_valid_json_after_every_sample(tmp_path: Path) -> None:
    report = writer(tmp_path)
    assert report.path.name.endswith("-llamacpp-linux-x86_64-2c-24gb.json")
    run = CaseRun(CASE, environment={"model": "qwen3-0.6b"}, load=LoadResult("m", 1.5))
    for i in range(3):
        run.samples.append(sample(i))
        report.record_case(run)
        on_disk = load_report(report.path)  # what a reader sees right now
        assert len(on_disk["cases"][CASE.id]["samples"]) == i + 1
        assert on_disk["status"] == "running"
    run.memory = MemoryReport(rss_bytes=900_000_000)
    report.record_case(run)
    report.record_verdict(Row(CASE.id, "ttft_s", "0.1 s", "none", "no baseline", False))
    report.finish("complete", failed_tests=0, exit_code=0)
    data = load_report(report.path)
    case = data["cases"][CASE.id]
    assert data["status"] == "complete"
    assert case["values"]["ttft_s"] == pytest.approx([0.1, 0.101, 0.102])
    assert case["values"]["rss_bytes"] == [900_000_000]
    assert case["summaries"]["ttft_s"]["median"] == pytest.approx(0.101)
    assert case["verdicts"][0]["metric"] == "ttft_s"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_verdict_survives_a_later_update_of_its_case(tmp_path: Path) -> None:
    report = writer(tmp_path)
    run = CaseRun(CASE, samples=[sample(0)])
    report.record_case(run)
    report.record_verdict(Row(CASE.id, "ttft_s", "0.1 s", "none", "no baseline", False))
    run.samples.append(sample(1))
    report.record_case(run)
    assert len(load_report(report.path)["cases"][CASE.id]["verdicts"]) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read"),
        (json.dumps({"format": "something-else"}), "is not an lmgauge report"),
        (json.dumps({"format": FORMAT, "version": VERSION + 1}), "format version 2"),
        (json.dumps({"format": FORMAT, "version": VERSION}), "no 'cases'"),
    ],
)
def test_a_file_that_is_not_a_readable_report_is_refused(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_report(path)
    assert str(path) in str(info.value)


def test_an_unwritable_report_directory_is_an_error_naming_it(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/lmgauge-reports")  # not even root can create a folder here
    else:
        target = tmp_path / "locked" / "reports"
        target.parent.mkdir()
        target.parent.chmod(0o500)
    with pytest.raises(ConfigError, match=r"cannot write reports to .*--lmgauge-report-dir"):
        check_writable(target)


def test_markdown_lists_failures_and_goes_to_the_github_step_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = writer(tmp_path)
    report.record_case(CaseRun(CASE, environment={"synthetic_weights": True}))
    report.record_verdict(
        Row(
            CASE.id,
            "decode_tokens_per_s",
            "40 t/s",
            "55 t/s (measured)",
            "1.38x slower",
            True,
            outcome="regression",
        )
    )
    text = render_markdown(report.data)
    assert "| llamacpp-qwen3-0.6b-Q4_K_M-ctx4096 | decode_tokens_per_s | 40 t/s |" in text
    assert "### 1 failed" in text
    assert "synthetic weights" in text
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert write_step_summary(report.data) == summary
    assert summary.read_text().startswith("earlier step\n## lmgauge: llamacpp")
