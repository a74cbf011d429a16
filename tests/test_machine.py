"""The machine: identity, calibration, and disturbance while measuring."""

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmgauge import hardware, machine
from lmgauge.machine import (
    Calibration,
    Disturbance,
    DisturbanceMonitor,
    calibrate,
    compare_calibration,
    machine_identity,
)

RAW_ID = "3d1219c7c4c5404aaa1f6d2a48adfda4"


def _linux(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
    monkeypatch.setattr("platform.system", lambda: "Linux")
    monkeypatch.setattr(machine, "MACHINE_ID_PATHS", paths)


def test_the_machine_id_is_hashed_never_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "machine-id"
    etc.write_text(RAW_ID + "\n")
    _linux(monkeypatch, etc, tmp_path / "dbus-machine-id")
    identity = machine_identity()
    expected = hashlib.sha256(f"lmgauge:{RAW_ID}".encode()).hexdigest()[:16]
    assert identity == machine.MachineIdentity(expected, str(etc))
    assert RAW_ID not in repr(identity)


def test_the_dbus_copy_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc, dbus = tmp_path / "machine-id", tmp_path / "dbus-machine-id"
    etc.write_text("uninitialized\n")  # machine-id(5): before the first boot completes
    dbus.write_text(RAW_ID + "\n")
    _linux(monkeypatch, etc, dbus)
    assert machine_identity().source == str(dbus)


def test_no_readable_id_gives_an_empty_digest_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "machine-id"
    etc.write_text("")
    _linux(monkeypatch, etc, tmp_path / "missing")
    identity = machine_identity()
    assert identity.digest == ""
    assert "no machine id readable" in identity.source
    assert "holds no 32-hex-digit id" in identity.source
    assert "FileNotFoundError" in identity.source


def test_macos_reads_the_platform_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    uuid = "4C4C4544-0042-3510-8051-B7C04F4E3132"
    ioreg = f'  "IOPlatformSerialNumber" = "C02XX"\n  "IOPlatformUUID" = "{uuid}"\n'
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr(hardware, "run_tool", lambda *command: ioreg)
    identity = machine_identity()
    assert identity.digest == hashlib.sha256(f"lmgauge:{uuid}".encode()).hexdigest()[:16]
    assert identity.source == "ioreg IOPlatformUUID"
    monkeypatch.setattr(hardware, "run_tool", lambda *command: "")
    assert machine_identity().digest == ""


def test_this_machine_has_a_stable_identity() -> None:
    first = machine_identity()
    assert first == machine_identity()
    assert len(first.digest) in (0, 16)


def _calibration(memory_gb: float, gflops: float, spread: float = 0.02) -> Calibration:
    return Calibration(memory_gb * 1e9, spread, gflops * 1e9, spread, runs=5)


def test_calibration_round_trips() -> None:
    calibration = _calibration(59.8, 48.0)
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    with pytest.raises(ValueError, match="out of range"):
        Calibration.from_dict({**calibration.to_dict(), "compute_flops_per_s": 0})
    with pytest.raises(KeyError):
        Calibration.from_dict({"runs": 5})


def test_compare_calibration_names_what_changed() -> None:
    recorded = _calibration(59.8, 48.0)
    assert compare_calibration(recorded, _calibration(55.0, 50.0), floor=0.1) is None  # within 10%
    assert compare_calibration(recorded, _calibration(41.2, 48.0), floor=0.1) == (
        "this host reads memory 31% slower than when the baseline was recorded (41.2 vs 59.8 GB/s)"
    )
    assert compare_calibration(recorded, _calibration(59.8, 58.6), floor=0.1) == (
        "this host computes 22% faster than when the baseline was recorded (58.6 vs 48.0 GFLOP/s)"
    )
    both = compare_calibration(recorded, _calibration(41.2, 58.6), floor=0.1)
    assert both == (
        "this host reads memory 31% slower (41.2 vs 59.8 GB/s) and computes 22% faster "
        "(58.6 vs 48.0 GFLOP/s) than when the baseline was recorded"
    )
    # The default floor lets a shared VM's minute-to-minute drift pass, not a new machine.
    assert compare_calibration(recorded, _calibration(49.0, 40.0)) is None  # 18%, 17%
    assert compare_calibration(recorded, _calibration(29.9, 48.0)) is not None  # 2x slower


def test_a_noisy_calibration_widens_the_tolerance() -> None:
    recorded = _calibration(59.8, 48.0)
    assert compare_calibration(recorded, _calibration(41.2, 48.0, spread=0.35)) is None
    assert compare_calibration(recorded, _calibration(41.2, 48.0), floor=0.4) is None


def test_a_busy_calibration_and_another_method_are_named() -> None:
    recorded = _calibration(59.8, 48.0)
    busy = Calibration(41.2e9, 0.02, 48e9, 0.02, runs=5, other_cpu_share=0.6)
    reason = compare_calibration(recorded, busy)
    assert reason is not None
    assert reason.endswith("(other processes used 60% of the CPU while calibrating now)")
    other = Calibration(59.8e9, 0.02, 48e9, 0.02, runs=5, method="a pure-Python loop")
    assert "calibrated another way" in (compare_calibration(recorded, other) or "")


def test_calibrate_measures_this_machine() -> None:
    calibration = calibrate(runs=3)
    # Any machine this runs on reads 0.1-10,000 GB/s and computes 0.1-10,000 GFLOP/s.
    assert 1e8 < calibration.memory_read_bytes_per_s < 1e13
    assert 1e8 < calibration.compute_flops_per_s < 1e13
    assert calibration.memory_read_spread >= 0
    assert calibration.runs == 3
    assert 0 <= calibration.other_cpu_share <= 1
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    with pytest.raises(ValueError, match="at least 1 run"):
        calibrate(runs=0)


@pytest.mark.parametrize(
    ("disturbance", "reason"),
    [
        (Disturbance(1.0, 0.1, 0.5), None),
        (Disturbance(1.0, 0.47, 0.5), "other processes used 47% of the CPU"),
        (Disturbance(1.0, 0.0, 0.5, steal_cpu_share=0.3), "the hypervisor withheld 30%"),
        (Disturbance(1.0, 0.0, 0.5, "CPU_Speed_Limit = 80"), "thermal: CPU speed limited to 80%"),
        (Disturbance(1.0, 0.0, 0.5, "CPU_Speed_Limit = 100", "AC Power"), None),
        (Disturbance(1.0, 0.0, 0.5, None, "Battery Power"), "on battery power"),
    ],
)
def test_what_counts_as_disturbed(disturbance: Disturbance, reason: str | None) -> None:
    found = disturbance.disturbed()
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert reason in found


def test_macos_thermal_state_and_power_are_read_at_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs: dict[tuple[str, ...], str] = {
        ("pmset", "-g", "batt"): "Now drawing from 'Battery Power'\n",
        ("pmset", "-g", "therm"): "CPU_Scheduler_Limit = 100\nCPU_Speed_Limit = 80\n",
    }
    calls: list[tuple[str, ...]] = []

    def run_tool(*command: str) -> str:
        calls.append(command)
        return outputs[command]

    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr(hardware, "run_tool", run_tool)
    monitor = DisturbanceMonitor()
    monitor.start()
    assert calls == []  # nothing is spawned at start
    result = monitor.stop()
    assert (result.thermal_state, result.power_source) == ("CPU_Speed_Limit = 80", "Battery Power")
    assert result.disturbed() == "thermal: CPU speed limited to 80%; on battery power"


def test_stop_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before start"):
        DisturbanceMonitor().stop()


def test_a_busy_process_counts_as_other_unless_its_pid_is_passed() -> None:
    # Its own session (another process group): a server lmgauge does not know about.
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        time.sleep(0.3)  # let it start spinning
        # Both monitors watch the same stretch, so other load on this shared machine
        # reads the same in both: the difference is the busy process alone.
        without, with_pid = DisturbanceMonitor(), DisturbanceMonitor([busy.pid, 2**22 + 1])
        with without, with_pid:
            time.sleep(1.5)
    finally:
        busy.kill()
        busy.wait()
    assert without.result is not None
    assert with_pid.result is not None
    assert without.result.other_cpu_share > 0.2  # one core of a few, spinning
    assert with_pid.result.other_cpu_share < without.result.other_cpu_share - 0.1
    assert with_pid.result.own_cpu_share > without.result.own_cpu_share + 0.1
    assert without.result.disturbed(limit_share=0.2) is not None
    assert 1.4 < without.result.wall_s < 30


def test_an_extra_process_that_exits_midway_is_handled() -> None:
    short = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    monitor = DisturbanceMonitor([short.pid])
    monitor.start()
    short.wait()  # exits and is reaped by this process: its time moves to our children
    result = monitor.stop()
    assert 0 <= result.own_cpu_share <= 1
    assert 0 <= result.other_cpu_share <= 1
