"""The baseline store: versioned, atomic, never silently overwritten."""

from pathlib import Path

import pytest

from lmgauge.baselines import (
    BaselineFile,
    BaselineMachine,
    CaseBaseline,
    MetricBaseline,
    add_runs,
    baseline_path,
    environment_differences,
    judgeable,
    load_baseline,
    save_baseline,
)
from lmgauge.errors import ConfigError
from lmgauge.machine import Calibration, MachineIdentity

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
        (
            '{"format": "lmgauge-baseline", "version": 2, "profile": "p", "backend": "b", '
            '"machine": {"identity": "", "calibration": null}, "cases": {}}',
            "malformed",
        ),
        (
            '{"format": "lmgauge-baseline", "version": 2, "profile": "p", "backend": "b", '
            '"machine": {"identity": "a3f0", "calibration": {"runs": 5}}, "cases": {}}',
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


HERE = MachineIdentity("9c1b2d3e4f5a6b7c", "/etc/machine-id")
ELSEWHERE = MachineIdentity("a3f0112233445566", "/etc/machine-id")
CALIBRATION = Calibration(59.8e9, 0.03, 48e9, 0.02, runs=5)
SLOW_MEMORY = Calibration(41.2e9, 0.03, 48e9, 0.02, runs=5)
SHIPPED = Path(__file__).resolve().parent.parent / "baselines"


def _runs(decode: float) -> dict[str, tuple[dict[str, object], dict[str, list[float]]]]:
    return {"case-a": (ENV, {"decode_tokens_per_s": [decode, decode + 1, decode - 1]})}


def _record(
    existing: BaselineFile | None,
    decode: float,
    identity: MachineIdentity | None = HERE,
    calibration: Calibration | None = CALIBRATION,
) -> BaselineFile:
    return add_runs(
        existing,
        "linux-x86_64-2c-24gb",
        "llamacpp",
        _runs(decode),
        source="test",
        host={},
        identity=identity,
        calibration=calibration,
    )


def test_a_version_1_baseline_loads_with_no_machine_and_is_not_judged() -> None:
    baseline = load_baseline(baseline_path(SHIPPED, "linux-x86_64-2c-24gb", "llamacpp"))
    assert baseline is not None
    assert (baseline.format_version, baseline.machine) == (1, None)
    assert judgeable(baseline, HERE, CALIBRATION) == (
        "the baseline records no machine identity (format 1, recorded before lmgauge "
        "bound baselines to machines): re-record it here with --lmgauge-update-baselines"
    )


def test_a_version_2_baseline_round_trips_with_its_machine(tmp_path: Path) -> None:
    path = baseline_path(tmp_path, "linux-x86_64-2c-24gb", "llamacpp")
    recorded = _record(None, 7.0)
    assert recorded.machine == BaselineMachine(HERE.digest, CALIBRATION)
    save_baseline(path, recorded)
    assert load_baseline(path) == recorded
    assert '"identity": "9c1b2d3e4f5a6b7c"' in path.read_text()
    assert "/etc/machine-id" not in path.read_text()


def test_judgeable_says_why_a_baseline_cannot_be_judged_here() -> None:
    recorded = _record(None, 7.0)
    assert judgeable(recorded, HERE, CALIBRATION) is None
    assert judgeable(recorded, ELSEWHERE, CALIBRATION) == (
        "the baseline was recorded on another machine (9c1b…, this machine is a3f0…)"
    )
    assert judgeable(recorded, HERE, SLOW_MEMORY) == (
        "this host reads memory 31% slower than when the baseline was recorded (41.2 vs 59.8 GB/s)"
    )
    unreadable = MachineIdentity("", "no machine id readable (/etc/machine-id: ...)")
    assert "this machine has no readable identity (no machine id readable" in (
        judgeable(recorded, unreadable, CALIBRATION) or ""
    )
    uncalibrated = _record(None, 7.0, calibration=None)
    assert "records no calibration" in (judgeable(uncalibrated, HERE, CALIBRATION) or "")
    unbound = _record(None, 7.0, identity=None)
    assert "recorded where none was readable" in (judgeable(unbound, HERE, CALIBRATION) or "")


@pytest.mark.parametrize("backend", ["ollama", "lmstudio", "mlx"])
def test_derived_baselines_stay_reported_never_judged(backend: str) -> None:
    # judgeable has nothing to bind: judge.py reports derived figures, on any machine.
    baseline = load_baseline(baseline_path(SHIPPED, "apple-m3-max-128gb", backend))
    assert baseline is not None
    assert baseline.machine is None
    assert judgeable(baseline, HERE, CALIBRATION) is None


def test_runs_on_the_same_machine_are_added() -> None:
    first = _record(None, 7.0)
    later = Calibration(57.0e9, 0.03, 49e9, 0.02, runs=5)  # within 10%: the same machine
    second = _record(first, 8.0, calibration=later)
    assert second.cases["case-a"].metrics["decode_tokens_per_s"].run_medians == (7.0, 8.0)
    assert second.machine == BaselineMachine(HERE.digest, later)  # the latest calibration
    kept = _record(second, 9.0, calibration=None)
    assert kept.machine == second.machine


def test_a_run_from_another_machine_is_refused() -> None:
    first = _record(None, 7.0)
    with pytest.raises(ConfigError, match=r"recorded on another machine \(9c1b…, this machine"):
        _record(first, 8.0, identity=ELSEWHERE)
    with pytest.raises(ConfigError, match="has no readable identity"):
        _record(first, 8.0, identity=MachineIdentity("", "no machine id readable"))
    # The same machine calibrating differently (a busy moment of a shared VM) still
    # records: the file keeps the latest calibration, against which runs are judged.
    again = _record(first, 8.0, calibration=SLOW_MEMORY)
    assert again.machine == BaselineMachine(HERE.digest, SLOW_MEMORY)


def test_an_unbound_baseline_is_bound_and_its_unknown_runs_dropped() -> None:
    shipped = load_baseline(baseline_path(SHIPPED, "linux-x86_64-2c-24gb", "llamacpp"))
    assert shipped is not None
    derived = CaseBaseline(ENV, {"decode_tokens_per_s": MetricBaseline((30.0,), "derived")})
    unbound = BaselineFile(
        shipped.profile,
        shipped.backend,
        {**shipped.cases, "case-a": shipped.cases[next(iter(shipped.cases))], "roof": derived},
        format_version=1,
    )
    bound = _record(unbound, 7.0)
    assert bound.machine == BaselineMachine(HERE.digest, CALIBRATION)
    assert set(bound.cases) == {"case-a", "roof"}  # measured elsewhere: dropped
    decode = bound.cases["case-a"].metrics["decode_tokens_per_s"]
    assert decode.run_medians == (7.0,)  # not pooled with the unknown machine's runs
    assert bound.cases["roof"] == derived
    assert judgeable(bound, HERE, CALIBRATION) is None


def test_without_an_identity_runs_are_pooled_as_before() -> None:
    first = _record(None, 7.0, identity=None)
    second = _record(first, 8.0, identity=None)
    assert second.machine is None
    assert second.cases["case-a"].metrics["decode_tokens_per_s"].run_medians == (7.0, 8.0)
