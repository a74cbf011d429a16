"""The pytest plugin, run as users run it: pytest in a subprocess (pytester), on the
embedded engine with the qwen3-0.6b shape and a short workload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmgauge.report import load_report
from lmgauge.synthetic import cache_dir

# pytester points HOME at a temporary folder; keep the subprocesses on the real model cache.
MODEL_CACHE_ROOT = cache_dir().parent

pytest_plugins = ["pytester"]

SUITE = """
from lmgauge.runner import Case
from lmgauge.verdicts import CheckSession


def test_decode(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "decode_tokens_per_s")


def test_memory(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "rss_bytes")
"""
SHORT = [
    "--lmgauge-backend",
    "llamacpp",
    "--lmgauge-models",
    "qwen3-0.6b",
    "--lmgauge-quants",
    "Q4_K_M",
    "--lmgauge-samples",
    "4",
    "--lmgauge-max-samples",
    "4",
    "--lmgauge-prompt-tokens",
    "16",
    "--lmgauge-max-tokens",
    "8",
    "-p",
    "no:cacheprovider",
]
CASE = "llamacpp-qwen3-0.6b-Q4_K_M-ctx4096"


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("LMGAUGE_CACHE_DIR", str(MODEL_CACHE_ROOT))
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def test_ids_read_naturally_and_k_selects(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess(
        "--collect-only", "-q", "--lmgauge-backend", "llamacpp", "-k", "qwen3-7b and decode"
    )
    result.stdout.fnmatch_lines(
        [
            "test_suite.py::test_decode[llamacpp-qwen3-7b-Q4_K_M-ctx4096]",
            "1/4 tests collected (3 deselected)*",
        ]
    )


def test_an_unknown_model_is_an_error_before_anything_loads(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess(
        "--lmgauge-backend", "llamacpp", "--lmgauge-models", "qwen3-9b"
    )
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*unknown model 'qwen3-9b'*known models: qwen3-0.6b*"])


def test_a_context_beyond_the_model_is_an_error(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess(
        "--lmgauge-backend",
        "llamacpp",
        "--lmgauge-models",
        "qwen3-1.7b",
        "--lmgauge-contexts",
        "65536",
    )
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*qwen3-1.7b supports at most 32768 tokens of context*"])


def test_record_then_regression_then_unlike_environment(suite: pytest.Pytester) -> None:
    recorded = suite.runpytest_subprocess(*SHORT, "--lmgauge-update-baselines")
    recorded.assert_outcomes(passed=2)
    recorded.stdout.fnmatch_lines(["*baseline written: baselines/*/llamacpp.json"])
    path = next(Path(suite.path, "baselines").glob("*/llamacpp.json"))
    again = suite.runpytest_subprocess(*SHORT, "--lmgauge-update-baselines")
    again.stdout.fnmatch_lines(["*baseline written: baselines/*/llamacpp.json (previous kept*"])
    data = json.loads(path.read_text())
    decode = data["cases"][CASE]["metrics"]["decode_tokens_per_s"]
    assert decode["provenance"] == "measured"
    assert len(decode["run_medians"]) == 2  # a second recording adds a run

    # A baseline ten times faster than this machine: the run must be a regression.
    decode["values"] = [10 * v for v in decode["values"]]
    path.write_text(json.dumps(data))
    slower = suite.runpytest_subprocess(*SHORT)
    slower.assert_outcomes(passed=1, failed=1)
    slower.stdout.fnmatch_lines(["*regression against the baseline: *x slower (significant*"])
    assert (
        json.loads(path.read_text()) == data
    )  # never overwritten without --lmgauge-update-baselines
    reports = sorted(Path(suite.path, "reports").glob("*-llamacpp-*.json"))
    assert len(reports) == 3  # one per run
    report = load_report(reports[-1])
    case = report["cases"][CASE]
    assert report["status"] == "complete"
    assert len([s for s in case["samples"] if not s["warmup"]]) == 4
    decode_row = next(r for r in case["verdicts"] if r["metric"] == "decode_tokens_per_s")
    assert decode_row["outcome"] == "regression"
    assert decode_row["baseline_provenance"] == "measured"
    assert case["derived"]["decode_roofline"]["provenance"] == "derived"

    # Recording another run against that baseline reports the difference, never fails.
    recording = suite.runpytest_subprocess(*SHORT, "--lmgauge-update-baselines")
    recording.assert_outcomes(passed=2)
    recording.stdout.fnmatch_lines(["*(recording a baseline run: reported, not failed)*"])

    data["cases"][CASE]["environment"]["quantization"] = "Q8_0"
    path.write_text(json.dumps(data))
    unlike = suite.runpytest_subprocess(*SHORT)
    unlike.stdout.fnmatch_lines(
        [
            "*refusing to compare with a baseline from an unlike "
            "environment: quantization: 'Q8_0' -> 'Q4_K_M'*"
        ]
    )
    allowed = suite.runpytest_subprocess(*SHORT, "--lmgauge-allow-unlike")
    allowed.stdout.fnmatch_lines(["*UNLIKE environment, allowed by --lmgauge-allow-unlike*"])
    assert "refusing to compare" not in allowed.stdout.str()
    latest = load_report(sorted(Path(suite.path, "reports").glob("*.json"))[-1])
    assert latest["run"]["allow_unlike"] is True


def test_an_unwritable_report_directory_fails_before_any_benchmark(
    suite: pytest.Pytester,
) -> None:
    result = suite.runpytest_subprocess(*SHORT, "--lmgauge-report-dir", "/proc/lmgauge")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot write reports to /proc/lmgauge*--lmgauge-report-dir*"])
    assert "PASSED" not in result.stdout.str()
    assert "passed" not in result.stdout.str()


def test_a_corrupt_baseline_names_the_file(suite: pytest.Pytester) -> None:
    folder = Path(suite.path, "baselines", "some-profile")
    folder.mkdir(parents=True)
    (folder / "llamacpp.json").write_text("{broken")
    result = suite.runpytest_subprocess(*SHORT, "--lmgauge-profile", "some-profile")
    result.stdout.fnmatch_lines(["*baseline baselines/some-profile/llamacpp.json cannot be read*"])


def test_the_suite_against_an_ollama_server(pytester: pytest.Pytester) -> None:
    """The whole suite path (auto detection aside) against the protocol-faithful Ollama
    fake: seed 003's scenarios, the embeddings one included, and the serving metrics."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_ollama import FakeModel, FakeOllama

    pytester.makepyfile(
        test_suite=SUITE
        + """

import pytest
from lmgauge.scenarios import SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(lmgauge_case: Case, scenario: str, lmgauge: CheckSession) -> None:
    lmgauge.check_scenario(lmgauge_case, scenario)
"""
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    tag = "qwen2.5:7b-instruct-q4_K_M"  # the catalog's Ollama name of qwen3-7b at Q4_K_M
    with FakeOllama({tag: FakeModel(size=4_680_000_000)}, ttft_s=0.01, itl_s=0.001) as fake:
        result = pytester.runpytest_subprocess(
            "--lmgauge-backend",
            "ollama",
            "--lmgauge-url",
            fake.url,
            "--lmgauge-models",
            "qwen3-7b",
            "--lmgauge-quants",
            "Q4_K_M",
            "--lmgauge-contexts",
            "4096",
            "--lmgauge-samples",
            "4",
            "--lmgauge-max-tokens",
            "8",
            "-p",
            "no:cacheprovider",
        )
    result.assert_outcomes(passed=6, skipped=1)  # Ollama reports no process RSS: skipped
    result.stdout.fnmatch_lines(
        [
            "*backend: ollama (asked for ollama)*",
            "*ollama-qwen3-7b-Q4_K_M-ctx4096 embedding_chunks_per_min: *(measured)*",
            "*ollama-qwen3-7b-Q4_K_M-ctx4096 model_switch_s: *(measured)*",
        ]
    )


def test_a_config_with_fictional_settings_stops_the_run(suite: pytest.Pytester) -> None:
    config = Path(__file__).parents[1] / "configs" / "seeds" / "seed004-ollama.toml"
    result = suite.runpytest_subprocess("--lmgauge-config", str(config))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*seed004-ollama.toml has 6 setting(s) its server does not have:*",
            "*server.OLLAMA_NUM_THREADS: error: OLLAMA_NUM_THREADS is not an Ollama setting; "
            "threads are the `num_thread` model option*",
        ]
    )


def test_an_ollama_server_not_running_the_config_is_refused_by_name(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The protocol-faithful Ollama fake listens in this process, whose environment does
    not have the config's OLLAMA_KV_CACHE_TYPE: the run must say so, not measure."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_ollama import FakeModel, FakeOllama

    monkeypatch.delenv("OLLAMA_KV_CACHE_TYPE", raising=False)
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    config = pytester.path / "q8.toml"
    config.write_text(
        '[gate]\nbackend = "ollama"\nmodels = ["qwen3-7b"]\nquantizations = ["Q4_K_M"]\n'
        'contexts = [4096]\n[server]\nOLLAMA_KV_CACHE_TYPE = "q8_0"\n[load]\nnum_batch = 256\n'
    )
    tag = "qwen2.5:7b-instruct-q4_K_M"
    with FakeOllama({tag: FakeModel(size=4_680_000_000)}, ttft_s=0.01, itl_s=0.001) as fake:
        result = pytester.runpytest_subprocess(
            f"--lmgauge-config={config}", f"--lmgauge-url={fake.url}", "-p", "no:cacheprovider"
        )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*the running Ollama server (pid *) does not run *q8.toml: OLLAMA_KV_CACHE_TYPE: "
            "the config says 'q8_0', the running server has unset (default 'f16')*"
        ]
    )


def test_the_disturbance_limit_reaches_every_sample(pytester: pytest.Pytester) -> None:
    """--lmgauge-disturbance-limit voids samples as it discards rounds: one limit."""
    pytester.makepyfile(
        test_limit="""
from lmgauge.verdicts import CheckSession


def test_limit(lmgauge: CheckSession) -> None:
    assert lmgauge.workload.disturbance_limit == 0.9
"""
    )
    result = pytester.runpytest_subprocess(
        "--lmgauge-backend", "llamacpp", "--lmgauge-disturbance-limit", "0.9", *SHORT[2:]
    )
    result.assert_outcomes(passed=1)
