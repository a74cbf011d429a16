"""The baseline store: versioned, atomic, never silently overwritten."""

from pathlib import Path

import pytest

from lmgauge.baselines import (
    BaselineFile,
    CaseBaseline,
    MetricBaseline,
    baseline_path,
    environment_differences,
    load_baseline,
    save_baseline,
)
from lmgauge.errors import ConfigError

ENV = {
    "model": "qwen3-7b",
    "model_digest": "abc",
    "quantization": "Q4_K_M",
    "context_tokens": 4096,
    "backend": "llamacpp",
    "backend_version": "0.3.36",
    "profile": "linux-x86_64-2c-24gb",
}


def _baseline(decode: float) -> BaselineFile:
    metric = MetricBaseline((decode, decode + 1, decode - 1), "measured")
    case = CaseBaseline(ENV, {"decode_tokens_per_s": metric})
    return BaselineFile("linux-x86_64-2c-24gb", "llamacpp", {"case-a": case}, {"cpu": "x"})


def test_round_trip_and_the_previous_file_is_kept(tmp_path: Path) -> None:
    path = baseline_path(tmp_path, "linux-x86_64-2c-24gb", "llamacpp")
    assert load_baseline(path) is None
    save_baseline(path, _baseline(7.0))
    save_baseline(path, _baseline(8.0))
    loaded = load_baseline(path)
    assert loaded == _baseline(8.0)
    previous = load_baseline(path.with_name("llamacpp.json.prev"))
    assert previous == _baseline(7.0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["llamacpp.json", "llamacpp.json.prev"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "cannot be read"),
        ('{"format": "other"}', "is not an lmgauge baseline"),
        ('{"format": "lmgauge-baseline", "version": 99}', "format version 99"),
        (
            '{"format": "lmgauge-baseline", "version": 1, "profile": "p", "backend": "b", '
            '"cases": {"c": {"environment": {}, "metrics": {"m": {"values": [1], '
            '"provenance": "guessed"}}}}}',
            "malformed",
        ),
    ],
)
def test_a_corrupt_baseline_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "llamacpp.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_baseline(path)
    assert str(path) in str(info.value)


def test_environment_differences_are_listed() -> None:
    current = {**ENV, "quantization": "Q8_0", "backend_version": "0.3.37"}
    assert environment_differences(ENV, current) == [
        "quantization: 'Q4_K_M' -> 'Q8_0'",
        "backend_version: '0.3.36' -> '0.3.37'",
    ]
    assert environment_differences(ENV, dict(ENV)) == []
    other_host = {**ENV, "host_cpu": "Apple M3 Max"}
    assert environment_differences({**ENV, "host_cpu": "AMD EPYC"}, other_host) == [
        "host_cpu: 'AMD EPYC' -> 'Apple M3 Max'"
    ]


def test_run_noise_bounds_the_next_run() -> None:
    one = MetricBaseline((1.0,), "measured", run_medians=(40.0,))
    assert (one.run_spread, one.run_noise) == (0.0, 0.0)
    two = MetricBaseline((1.0,), "measured", run_medians=(40.0, 44.0))
    assert two.run_noise == pytest.approx(0.10)  # with two runs: their spread
    three = MetricBaseline((1.0,), "measured", run_medians=(40.0, 50.0, 44.0))
    assert three.run_spread == pytest.approx(0.25)
    # t(0.95, 2) = 2.92; sd 5.03 / mean 44.67 = 0.113; sqrt(1 + 1/3) = 1.155
    assert three.run_noise == pytest.approx(2.92 * 0.1126 * 1.1547, rel=0.01)


@pytest.mark.parametrize("backend", ["ollama", "lmstudio", "mlx"])
def test_the_shipped_reference_baselines_are_derived_and_say_how(backend: str) -> None:
    root = Path(__file__).resolve().parent.parent / "baselines"
    baseline = load_baseline(baseline_path(root, "apple-m3-max-128gb", backend))
    assert baseline is not None
    assert len(baseline.cases) == 5 * 2 * 3  # seed models x quantizations x contexts
    for case in baseline.cases.values():
        metric = case.metrics["decode_tokens_per_s"]
        assert metric.provenance == "derived"
        assert metric.source.startswith("derived: 400 GB/s x ")
        assert 5 < metric.values[0] < 400
