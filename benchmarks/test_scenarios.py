"""The scenario workloads of seed 003 ("Qwen3 Model Selection Strategy for M3 Max
Optimization") per case, each judged against its target as a threshold (on the reference
profile; reported elsewhere). Select them with ``-k scenario``."""

import pytest

from lmgauge.runner import Case
from lmgauge.scenarios import SCENARIOS
from lmgauge.verdicts import CheckSession


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(lmgauge_case: Case, scenario: str, lmgauge: CheckSession) -> None:
    lmgauge.check_scenario(lmgauge_case, scenario)
