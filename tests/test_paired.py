"""Paired rounds (paired.py) with scripted arms: the order of arms, arm switches, discarded
rounds and the sequential stop. The arms are fake runners whose samples say how fast each
arm is; the statistics are the real ones (paired_stats)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgauge import paired as paired_module
from lmgauge.backends.base import LoadResult, MemoryReport
from lmgauge.errors import BackendUnavailableError
from lmgauge.machine import Disturbance
from lmgauge.measure import Sample
from lmgauge.paired import Arm, PairedMeasurement, PairedPlan
from lmgauge.paired_stats import SequentialPlan
from lmgauge.runner import Case, CaseRun

CASE = Case("llamacpp", "qwen3-0.6b", "Q4_K_M", 4096)


@dataclass
class ScriptedRunner:
    """Serves samples whose decode speed is ``speed`` x the round's drift, with noise."""

    name: str
    speed: float
    log: list[str]
    rng: random.Random
    drift: list[float] = field(default_factory=lambda: [1.0])
    loaded: bool = False

    def prepare(self, case: Case) -> CaseRun:
        self.load(case)
        return CaseRun(case, environment={"arm": self.name})

    def run(self, case: Case) -> CaseRun:
        return CaseRun(case)

    def load(self, case: Case) -> LoadResult:
        already = self.loaded
        self.loaded = True
        self.log.append(f"load {self.name}")
        return LoadResult("m", 0.5 * self.drift[0], already_loaded=already)

    def unload(self, case: Case) -> None:
        self.loaded = False
        self.log.append(f"unload {self.name}")

    def more_samples(self, case: Case, count: int, *, seed_offset: int = 0) -> list[Sample]:
        assert self.loaded, "sampled an arm that was not loaded"
        samples = []
        for _ in range(count):
            gap = 0.02 / (self.speed * self.drift[0]) * self.rng.lognormvariate(0, 0.01)
            samples.append(
                Sample(
                    16, True, 16, 32, "length", ttft_s=10 * gap, itl_s=(gap,) * 15, e2e_s=25 * gap
                )
            )
        self.log.append(f"sample {self.name}")
        return samples

    def memory(self) -> MemoryReport:
        return MemoryReport(rss_bytes=1000)

    def reset_backend(self, base_url: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def _measurement(
    speed_b: float, log: list[str], plan: PairedPlan, seed: int = 1
) -> PairedMeasurement:
    rng = random.Random(seed)
    arms = {
        "A": Arm("A", "base", ScriptedRunner("A", 1.0, log, rng)),  # type: ignore[arg-type]
        "B": Arm("B", "candidate", ScriptedRunner("B", speed_b, log, rng)),  # type: ignore[arg-type]
    }
    return PairedMeasurement(arms, plan, tolerance=0.02)


QUIET = Disturbance(wall_s=0.1, other_cpu_share=0.0, own_cpu_share=0.5)
BUSY = Disturbance(wall_s=0.1, other_cpu_share=0.6, own_cpu_share=0.3)
PLAN = PairedPlan(samples_per_arm=3, sequential=SequentialPlan(8, 4, 20, alpha=0.05), seed=5)


class ScriptedMonitor:
    """Stands in for DisturbanceMonitor: each stop() takes the next reading of a script."""

    script: ClassVar[list[Disturbance]] = []

    def __init__(self, extra_pids: object = ()) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> Disturbance:
        return ScriptedMonitor.script.pop(0) if ScriptedMonitor.script else QUIET


@pytest.fixture(autouse=True)
def scripted_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    ScriptedMonitor.script = []
    monkeypatch.setattr(paired_module, "DisturbanceMonitor", ScriptedMonitor)


def test_every_switch_of_arms_reloads_and_the_order_is_random() -> None:
    log: list[str] = []
    paired = _measurement(1.0, log, PLAN).run(CASE)
    stretches = [i for i, line in enumerate(log) if line.startswith("sample")]
    previous = None
    for i in stretches:
        arm = log[i].split()[1]
        if arm == previous:  # the same arm goes on: no switch, no reload
            assert log[i - 1] == f"sample {arm}"
        else:  # a switch: the other arm unloaded, this one loaded, then sampled
            assert log[i - 1] == f"load {arm}"
            assert previous is None or log[i - 2] == f"unload {previous}"
        previous = arm
    orders = [round_.order for round_ in paired.rounds]
    assert set(orders) == {("A", "B"), ("B", "A")}  # both orders occur (seeded)
    assert all(sorted(order) == ["A", "B"] for order in orders)
    continued = sum(a[-1] == b[0] for a, b in itertools.pairwise(orders))
    assert continued > 0  # the case this rule is for occurred
    loads = [r.arms[name].load_s for r in paired.rounds for name in "AB"]
    assert loads.count(None) == continued  # a stretch without a switch has no load time


def test_a_slower_candidate_is_a_regression_and_a_faster_one_an_improvement() -> None:
    slower = _measurement(0.90, [], PLAN).run(CASE)
    assert slower.verdicts["decode_tokens_per_s"].outcome == "regression"
    assert slower.verdicts["itl_s"].outcome == "regression"
    faster = _measurement(1.0 / 0.90, [], PLAN).run(CASE)
    assert faster.verdicts["decode_tokens_per_s"].outcome == "improvement"


def test_identical_arms_settle_as_no_change_at_the_first_look() -> None:
    same = _measurement(1.0, [], PLAN).run(CASE)
    assert len(same.kept) == 8
    assert same.verdicts["decode_tokens_per_s"].outcome == "no change"
    assert same.stop_reason.startswith("every metric settled")


@settings(max_examples=25, deadline=None)
@given(disturbed=st.sets(st.integers(0, 11), max_size=5), seed=st.integers(0, 1000))
def test_a_disturbed_round_never_enters_a_verdict(disturbed: set[int], seed: int) -> None:
    # Disturbed stretches are made to look 3x slower on arm B: were any of them judged,
    # B would read as a regression. Identical arms otherwise.
    log: list[str] = []
    measurement = _measurement(1.0, log, PLAN, seed=seed)
    runner_b = measurement.arms["B"].runner
    script: ClassVar[list[Disturbance]] = []
    for index in range(40):
        script += [BUSY, BUSY] if index in disturbed else [QUIET, QUIET]
    ScriptedMonitor.script = script
    original = runner_b.more_samples

    def slow_when_disturbed(case: Case, count: int, *, seed_offset: int = 0) -> list[Sample]:
        index = sum(1 for line in log if line == "sample B")
        runner_b.speed = 1 / 3 if index in disturbed else 1.0  # type: ignore[attr-defined]
        return original(case, count, seed_offset=seed_offset)

    runner_b.more_samples = slow_when_disturbed  # type: ignore[method-assign]
    paired = measurement.run(CASE)
    assert {r.index for r in paired.discarded} == {i for i in disturbed if i < len(paired.rounds)}
    for verdict in paired.verdicts.values():
        assert verdict.outcome != "regression"
    assert all(r.discarded is None for r in paired.kept)
    assert len(paired.ratios("decode_tokens_per_s")) == len(paired.kept)


def test_a_mostly_disturbed_case_is_not_gated_and_says_why() -> None:
    ScriptedMonitor.script = [BUSY] * 200
    paired = _measurement(0.5, [], PLAN).run(CASE)
    assert paired.not_gated is not None
    assert "other processes used 60% of the CPU" in paired.not_gated
    assert len(paired.discarded) == PLAN.max_discarded + 1


def test_the_budget_stops_new_rounds() -> None:
    plan = PairedPlan(
        samples_per_arm=3, sequential=SequentialPlan(8, 4, 20, alpha=0.05), budget_s=1e-9
    )
    paired = _measurement(1.0, [], plan).run(CASE)
    assert len(paired.kept) == 1
    assert "budget" in paired.stop_reason


def test_an_arm_that_fails_mid_run_ends_the_case_with_the_reason_and_keeps_its_rounds() -> None:
    measurement = _measurement(1.0, [], PLAN)
    runner_a = measurement.arms["A"].runner
    original = runner_a.load
    loads = []

    def dies_on_the_fifth_load(case: Case) -> LoadResult:
        loads.append(case)
        if len(loads) == 5:
            raise BackendUnavailableError("cannot connect to http://127.0.0.1:1/: refused")
        return original(case)

    runner_a.load = dies_on_the_fifth_load  # type: ignore[method-assign]
    paired = measurement.run(CASE)
    assert paired.error is not None
    assert "BackendUnavailableError: cannot connect" in paired.error
    assert len(paired.rounds) >= 2  # the rounds before the failure are kept
