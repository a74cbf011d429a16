"""The bandwidth probe and the decode roofline."""

import pytest

from lmgauge.hardware import decode_roofline_tokens_per_s, probe_bandwidth


def test_the_probe_measures_a_plausible_bandwidth() -> None:
    probe = probe_bandwidth(buffer_bytes=32 * 2**20, runs=2, threads=2)
    # Any machine this runs on moves between 0.1 and 10,000 GB/s.
    assert 1e8 < probe.read_bytes_per_s < 1e13
    assert 1e8 < probe.copy_bytes_per_s < 1e13
    assert probe.threads == 2
    assert "measured here" in probe.describe()
    # Each run's figure is kept; the headline figure is the best of them.
    assert len(probe.read_runs_bytes_per_s) == len(probe.copy_runs_bytes_per_s) == 2
    assert probe.read_bytes_per_s == max(probe.read_runs_bytes_per_s)


def test_the_probe_can_skip_the_copy() -> None:
    probe = probe_bandwidth(buffer_bytes=8 * 2**20, runs=3, threads=1, copy=False)
    assert len(probe.read_runs_bytes_per_s) == 3
    assert probe.copy_runs_bytes_per_s == ()
    assert "copy" not in probe.describe()


def test_bad_probe_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1 MiB"):
        probe_bandwidth(buffer_bytes=1024)


def test_roofline_matches_facts_example() -> None:
    # Qwen3-8B at Q4_K_M: 8.19e9 params x 4.89 bpw (llama.cpp tools/quantize/README.md) / 8
    # ~ 5.0 GB -> at most ~80 t/s at 400 GB/s.
    assert decode_roofline_tokens_per_s(400e9, 5.0e9) == pytest.approx(80)
    with_kv = decode_roofline_tokens_per_s(
        400e9, 5.0e9, kv_bytes_per_token=147456, context_tokens=32768
    )
    assert with_kv < 80
    with pytest.raises(ValueError, match="must be positive"):
        decode_roofline_tokens_per_s(400e9, 0)


def test_profile_slugs() -> None:
    from lmgauge.hardware import REFERENCE_PROFILES, HostFingerprint

    mac = HostFingerprint("Darwin", "arm64", "Apple M3 Max", 16, 128 * 2**30, "24.1", 40)
    assert mac.profile == "apple-m3-max-128gb"
    assert REFERENCE_PROFILES[mac.profile].bandwidth_bytes_per_s == 400e9
    linux = HostFingerprint("Linux", "x86_64", "AMD EPYC", 2, 25_276_502_016, "6.1")
    assert linux.profile == "linux-x86_64-2c-24gb"


def test_this_host_has_a_fingerprint() -> None:
    from lmgauge.hardware import fingerprint

    host = fingerprint()
    assert host.logical_cores >= 1
    assert host.memory_bytes > 2**30
    assert host.profile.endswith("gb")


def test_macos_details_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmgauge import hardware

    outputs = {
        "sysctl": "Apple M3 Max\n",
        "system_profiler": "      Chipset Model: Apple M3 Max\n      Total Number of Cores: 40\n",
        "pmset": "Now drawing from 'AC Power'\n -InternalBattery-0\nCPU_Speed_Limit = 100\n",
    }
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr(hardware, "run_tool", lambda *command: outputs[command[0]])
    host = hardware.fingerprint()
    assert (host.cpu, host.gpu_cores, host.power_source) == ("Apple M3 Max", 40, "AC Power")
    assert host.thermal_state == "CPU_Speed_Limit = 100"


def test_power_and_thermal_state_are_not_read_off_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmgauge import hardware

    def spawned(*command: str) -> str:
        raise AssertionError(f"ran {command}")

    monkeypatch.setattr("platform.system", lambda: "Linux")
    monkeypatch.setattr(hardware, "run_tool", spawned)
    assert (hardware.power_source(), hardware.thermal_state()) == (None, None)
