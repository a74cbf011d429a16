"""The serving matrix: one test per metric, parametrized by case.

A case id reads ``<backend>-<model>-<quantization>-ctx<context>``, so ``-k qwen3-7b``,
``-k Q4_K_M``, ``-k ctx4096`` and ``-k decode`` select what they say. Each case is
measured once; its metric tests judge the same samples against this hardware profile's
baseline and the planning documents' thresholds.
"""

import pytest

from lmgauge.runner import Case
from lmgauge.verdicts import CheckSession


def test_decode(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "decode_tokens_per_s")


def test_prefill(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "prefill_tokens_per_s")


def test_ttft(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "ttft_s")


def test_itl(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "itl_s")


def test_e2e(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "e2e_s")


def test_memory(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "rss_bytes")


def test_load(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "load_s")


def test_error_rate(lmgauge_case: Case, lmgauge: CheckSession) -> None:
    lmgauge.check(lmgauge_case, "error_rate_ratio")


@pytest.mark.parametrize("concurrency", [1, 2, 4], ids=["c1", "c2", "c4"])
def test_throughput(lmgauge_case: Case, concurrency: int, lmgauge: CheckSession) -> None:
    lmgauge.check_throughput(lmgauge_case, concurrency)
