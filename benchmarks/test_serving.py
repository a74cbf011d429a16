"""The serving matrix: one test per metric, parametrized by case.

A case id reads ``<backend>-<model>-<quantization>-ctx<context>``, so ``-k qwen3-7b``,
``-k Q4_K_M``, ``-k ctx4096`` and ``-k decode`` select what they say. Each case is
measured once; its metric tests judge the same samples against this hardware profile's
baseline and the planning documents' thresholds.
"""

import pytest

from lmgauge.runner import Case
from lmgauge.verdicts import CheckSession


def test_decode(case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(case, "decode_tokens_per_s")


def test_prefill(case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(case, "prefill_tokens_per_s")


def test_ttft(case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(case, "ttft_s")


def test_itl(case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(case, "itl_s")


def test_e2e(case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(case, "e2e_s")


def test_memory(case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(case, "rss_bytes")


def test_load(case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(case, "load_s")


def test_error_rate(case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(case, "error_rate_ratio")


@pytest.mark.parametrize("concurrency", [1, 2, 4], ids=["c1", "c2", "c4"])
def test_throughput(case: Case, concurrency: int, lmgauge: CheckSession) -> None:
    lmgauge.check_throughput(case, concurrency)
