"""The ``lmgauge`` command on reports built here: diff gates, trend, promote, plan, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmgauge.baselines import load_baseline
from lmgauge.cli import main
from lmgauge.report import FORMAT, VERSION

CASE = "ollama-qwen3-7b-Q4_K_M-ctx4096"


def report(
    path: Path,
    *,
    decode: float = 50.0,
    ttft: float = 0.2,
    version: str = "0.33.0",
    started: str = "2026-11-01T00:00:00+00:00",
    digest: str = "sha256:aaa",
    seed: int = 0,
    status: str = "complete",
) -> Path:
    """A report whose decode and TTFT samples scatter 2% around the given medians."""
    rng = np.random.default_rng(seed)
    environment = {
        "model": "qwen3-7b",
        "model_digest": digest,
        "quantization": "Q4_K_M",
        "context_tokens": 4096,
        "backend": "ollama",
        "backend_version": version,
        "host_cpu": "Apple M3 Max",
    }
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "status": status,
        "started_utc": started,
        "lmgauge_version": "0.1.0",
        "profile": "apple-m3-max-128gb",
        "host": {"cpu": "Apple M3 Max"},
        "backend": {"name": "ollama"},
        "cases": {
            CASE: {
                "environment": environment,
                "values": {
                    "decode_tokens_per_s": list(decode * rng.normal(1, 0.02, 8)),
                    "ttft_s": list(ttft * rng.normal(1, 0.02, 8)),
                    "rss_bytes": [5.2e9],
                },
                "verdicts": [],
            }
        },
    }
    path.write_text(json.dumps(data))
    return path


def test_diff_of_an_a_a_pair_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = report(tmp_path / "a.json", seed=1)
    b = report(tmp_path / "b.json", seed=2)
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "no regression" in out
    assert "geometric mean of B/A" in out


def test_diff_flags_a_slowdown_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = report(tmp_path / "a.json", seed=1)
    b = report(tmp_path / "b.json", decode=42.0, ttft=0.24, seed=2)
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION: 1.19x slower (significant, p=" in out  # decode 50 -> 42
    assert "REGRESSION: 1.20x slower (significant" in out  # TTFT 0.2 s -> 0.24 s
    assert "decode_tokens_per_s: 0.8" in out  # the geometric mean


def test_diff_refuses_unlike_environments_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = report(tmp_path / "a.json", seed=1)
    b = report(tmp_path / "b.json", digest="sha256:bbb", seed=2)
    assert main(["diff", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "refused: ollama-qwen3-7b-Q4_K_M-ctx4096 ran in unlike environments" in err
    assert "model_digest: 'sha256:aaa' -> 'sha256:bbb'" in err
    assert main(["diff", "--allow-unlike", str(a), str(b)]) == 0
    assert "compared despite model_digest" in capsys.readouterr().err


def test_diff_across_releases_warns_and_still_compares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = report(tmp_path / "a.json", seed=1)
    b = report(tmp_path / "b.json", version="0.34.0", seed=2)
    assert main(["diff", str(a), str(b)]) == 0
    assert "across releases (backend_version: '0.33.0' -> '0.34.0')" in capsys.readouterr().err


def test_diff_of_a_file_that_is_not_a_report_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert main(["diff", str(bad), str(bad)]) == 2
    assert f"{bad} is not an lmgauge report" in capsys.readouterr().err


def test_trend_makes_a_release_that_divides_speed_by_three_jump_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [
        report(tmp_path / "1.json", version="0.32.0", started="2026-09-01T00:00:00+00:00", seed=1),
        report(tmp_path / "2.json", version="0.33.0", started="2026-10-01T00:00:00+00:00", seed=2),
        report(
            tmp_path / "3.json",
            version="0.34.0",
            decode=50 / 3,
            started="2026-11-01T00:00:00+00:00",
            seed=3,
        ),
    ]
    assert main(["trend", *map(str, reversed(paths))]) == 0  # sorted by start time
    out = capsys.readouterr().out
    assert "#3: 2026-11-01T00:00:00+00:00 ollama 0.34.0" in out
    assert "REGRESSION #2 -> #3: ollama-qwen3-7b-Q4_K_M-ctx4096 decode_tokens_per_s: 3.0" in out
    assert "[3.0" in out  # the jump is marked in the table too


def test_promote_turns_a_report_into_a_baseline_and_keeps_the_old_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baselines = tmp_path / "baselines"
    first = report(tmp_path / "1.json", seed=1)
    second = report(tmp_path / "2.json", seed=2)
    assert main(["baseline", "promote", str(first), "--baselines", str(baselines)]) == 0
    assert main(["baseline", "promote", str(second), "--baselines", str(baselines)]) == 0
    path = baselines / "apple-m3-max-128gb" / "ollama.json"
    assert path.with_name("ollama.json.prev").exists()
    baseline = load_baseline(path)
    assert baseline is not None
    decode = baseline.cases[CASE].metrics["decode_tokens_per_s"]
    assert decode.provenance == "measured"
    assert len(decode.run_medians) == 2  # one run from each report
    assert "promoted from 2.json" in decode.source
    assert "previous kept as ollama.json.prev" in capsys.readouterr().out


def test_promote_refuses_an_interrupted_report_unless_asked(tmp_path: Path) -> None:
    partial = report(tmp_path / "r.json", status="interrupted")
    args = ["baseline", "promote", str(partial), "--baselines", str(tmp_path / "b")]
    assert main(args) == 2
    assert main([*args, "--allow-incomplete"]) == 0


def test_plan_prints_the_deployment_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--memory", "24GB", "--models", "qwen3-7b,qwen3-30b,qwen3-1.7b"]) == 0
    out = capsys.readouterr().out
    assert "qwen3-30b   19.55         on_demand" in out
    assert "preloaded 7.45 GB of 24.0 GB" in out


def test_plan_names_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--memory", "24GB", "--models", "qwen3-9b"]) == 2
    assert "qwen3-9b" in capsys.readouterr().err


def test_report_renders_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(report(tmp_path / "r.json"))]) == 0
    assert "## lmgauge: ollama on apple-m3-max-128gb" in capsys.readouterr().out


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["diff"], ["trend"], ["report"], ["baseline", "promote"], ["plan"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        assert "usage: lmgauge" in capsys.readouterr().out
