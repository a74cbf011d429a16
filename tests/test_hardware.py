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


def test_bad_probe_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1 MiB"):
        probe_bandwidth(buffer_bytes=1024)


def test_roofline_matches_facts_example() -> None:
    # FACTS.md: Qwen3-8B Q4_K_M ~5.0 GB -> at most ~80 t/s at 400 GB/s.
    assert decode_roofline_tokens_per_s(400e9, 5.0e9) == pytest.approx(80)
    with_kv = decode_roofline_tokens_per_s(
        400e9, 5.0e9, kv_bytes_per_token=147456, context_tokens=32768
    )
    assert with_kv < 80
    with pytest.raises(ValueError, match="must be positive"):
        decode_roofline_tokens_per_s(400e9, 0)
