"""An API key is read from the environment and never written into a report or a log.

The whole suite runs (pytester, a real pytest process) against the protocol-faithful
LM Studio fake (LM Studio cannot run here), which refuses requests without the token."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_lmstudio import FakeLMStudio, FakeModel

pytest_plugins = ["pytester"]

TOKEN = "sk-lm-secret-7f3a9c0e1d"
SUITE = """
from lmgauge.runner import Case
from lmgauge.verdicts import CheckSession


def test_decode(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "decode_tokens_per_s")
"""


def run_suite(pytester: pytest.Pytester, url: str) -> pytest.RunResult:
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester.runpytest_subprocess(
        "--lmgauge-backend=lmstudio",
        f"--lmgauge-url={url}",
        "--lmgauge-models=qwen3-7b",
        "--lmgauge-quants=Q4_K_M",
        "--lmgauge-contexts=4096",
        "--lmgauge-samples=4",
        "--lmgauge-max-tokens=8",
        "--lmgauge-report-dir=reports",
        "-p",
        "no:cacheprovider",
    )


def everything_written(pytester: pytest.Pytester, result: pytest.RunResult) -> str:
    reports = list(Path(pytester.path, "reports").glob("*.json"))
    assert reports, result.stdout.str()
    return "\n".join([result.stdout.str(), result.stderr.str(), *(p.read_text() for p in reports)])


def test_the_api_token_never_reaches_the_report_or_the_output(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    with FakeLMStudio([FakeModel("qwen2.5-7b-instruct")], api_key=TOKEN) as fake:
        result = run_suite(pytester, fake.url)
    result.assert_outcomes(passed=1)
    assert fake.requests[-1][2]["Authorization"] == f"Bearer {TOKEN}"  # it was used
    assert TOKEN not in everything_written(pytester, result)


def test_a_wrong_token_fails_clearly_without_showing_either_token(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LM_API_TOKEN", "sk-lm-wrong-55aa")
    with FakeLMStudio([FakeModel("qwen2.5-7b-instruct")], api_key=TOKEN) as fake:
        result = run_suite(pytester, fake.url)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*HTTP 401*set LM_API_TOKEN*"])
    written = everything_written(pytester, result)
    assert TOKEN not in written
    assert "sk-lm-wrong-55aa" not in written
