"""Paired, interleaved A/B measurement of one case.

Each round runs arm A and arm B once each, in a fresh random order, ``k`` samples per
arm. Every switch of arms loads the model again with the new arm's settings (in-process
engines, servers with a load API) or restarts its managed server with them; where a
round begins with the arm the last one ended with, that arm goes on without a reload.
Per metric, a round yields one ratio B/A of the two arms' round medians. The machine's
drift between rounds falls on both arms of a round alike and cancels in the ratio:
randomized multiple interleaved trials (Abedi & Brecht, "Conducting Repeatable
Experiments in Highly Variable Cloud Computing Environments", ICPE 2017), where runs
recorded at another time called identical systems up to 38% apart.

A stretch during which other processes took more than a share of the CPU (or, on macOS,
the machine throttled or ran on battery) discards its round, which is run again, up to a
bound; a case whose rounds were mostly disturbed is "not gated" and says why. Verdicts
come from paired_stats.judge_paired at the sequential plan's looks.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lmgauge.errors import LmgaugeError
from lmgauge.machine import Disturbance, DisturbanceMonitor
from lmgauge.measure import Sample
from lmgauge.metrics import JUDGED_SAMPLE_METRICS, SAMPLE_METRICS, higher_is_better
from lmgauge.paired_stats import PairedVerdict, SequentialPlan, judge_paired, should_stop
from lmgauge.runner import Case, CaseRun, Runner

if TYPE_CHECKING:
    from lmgauge.servers import ManagedServer

ARM_NAMES = ("A", "B")
ARM_SEED_OFFSET = {"A": 0, "B": 1_000_000}
"""Each arm asks with its own prompts: B never finds A's prompt in a server's cache."""
ROUND_METRICS = (*JUDGED_SAMPLE_METRICS, "load_s")
"""Judged from per-round ratios: the sample metrics, and the load time where both arms of
a round loaded afresh."""


@dataclass(frozen=True)
class PairedPlan:
    samples_per_arm: int = 3  # k: samples per arm per round; their median is the round's
    sequential: SequentialPlan = field(
        default_factory=lambda: SequentialPlan(metrics=len(ROUND_METRICS))
    )
    budget_s: float = 900.0  # per case: no new round starts once it is spent
    disturbance_limit: float = 0.25  # share of the CPU other processes may take
    max_discarded: int = 6  # disturbed rounds re-run per case, at most
    cooldown_s: float = 0.0  # pause between rounds (laptops: let the chip cool)
    seed: int | None = None  # of the arm order; None draws one (recorded either way)

    def __post_init__(self) -> None:
        if self.samples_per_arm < 1:
            raise ValueError(f"samples per arm must be >= 1, got {self.samples_per_arm}")
        if self.budget_s <= 0 or self.cooldown_s < 0 or self.max_discarded < 0:
            raise ValueError("budget_s must be > 0, cooldown_s and max_discarded >= 0")
        if not 0 < self.disturbance_limit <= 1:
            raise ValueError(
                f"the disturbance limit is a share of the CPU in (0, 1], "
                f"got {self.disturbance_limit}"
            )


@dataclass
class Arm:
    name: str  # "A" (base) or "B" (candidate)
    title: str  # what it runs, e.g. "base: configs/ollama-baseline.toml"
    runner: Runner
    server: ManagedServer | None = None  # started and stopped by lmgauge, else None
    server_pids: tuple[int, ...] = ()  # an unmanaged server's processes, where known

    def pids(self) -> tuple[int, ...]:
        """The processes working for this arm: their CPU use is no disturbance."""
        return tuple(self.server.pids()) if self.server is not None else self.server_pids


@dataclass
class ArmRound:
    """One arm's part of one round."""

    samples: list[Sample]
    medians: dict[str, float]  # per metric, over this round's valid samples
    disturbance: Disturbance
    load_s: float | None  # the switch to this arm: its model's load time
    rss_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": [s.to_dict() for s in self.samples],
            "medians": dict(self.medians),
            "disturbance": asdict(self.disturbance),
            "load_s": self.load_s,
            "rss_bytes": self.rss_bytes,
        }


@dataclass
class Round:
    index: int
    order: tuple[str, ...]
    arms: dict[str, ArmRound] = field(default_factory=dict)
    discarded: str | None = None  # why this round does not count

    def ratio(self, metric: str) -> float | None:
        """B/A of this round's medians, or None where an arm has no value."""
        a = self.arms["A"].medians.get(metric)
        b = self.arms["B"].medians.get(metric)
        if a is None or b is None or a <= 0 or b <= 0:
            return None
        return b / a

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "order": list(self.order),
            "discarded": self.discarded,
            "arms": {name: arm.to_dict() for name, arm in self.arms.items()},
            "ratios": {m: r for m in ROUND_METRICS if (r := self.ratio(m)) is not None},
        }


@dataclass
class PairedRun:
    case: Case
    seed: int
    runs: dict[str, CaseRun] = field(default_factory=dict)  # per arm: every sample
    rounds: list[Round] = field(default_factory=list)
    verdicts: dict[str, PairedVerdict] = field(default_factory=dict)
    stop_reason: str = ""
    not_gated: str | None = None  # why no verdict may gate (mostly disturbed rounds)
    skipped: str | None = None
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def kept(self) -> list[Round]:
        return [r for r in self.rounds if r.discarded is None]

    @property
    def discarded(self) -> list[Round]:
        return [r for r in self.rounds if r.discarded is not None]

    def ratios(self, metric: str) -> list[float]:
        return [r for round_ in self.kept if (r := round_.ratio(metric)) is not None]

    def arm_values(self, name: str, metric: str) -> list[float]:
        """An arm's per-round medians of ``metric`` over the kept rounds."""
        return [v for r in self.kept if (v := r.arms[name].medians.get(metric)) is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "rounds": [r.to_dict() for r in self.rounds],
            "kept_rounds": len(self.kept),
            "discarded_rounds": len(self.discarded),
            "stop_reason": self.stop_reason,
            "not_gated": self.not_gated,
            "elapsed_s": self.elapsed_s,
            "verdicts": {m: asdict(v) for m, v in self.verdicts.items()},
        }


def round_medians(samples: list[Sample], load_s: float | None) -> dict[str, float]:
    medians = {}
    valid = [s for s in samples if s.valid]
    for metric in JUDGED_SAMPLE_METRICS:
        get = SAMPLE_METRICS[metric].value
        values = [v for s in valid if (v := get(s)) is not None]
        if values:
            medians[metric] = statistics.median(values)
    if load_s is not None:
        medians["load_s"] = load_s
    return medians


class PairedMeasurement:
    """Measures cases on two arms in randomized interleaved rounds, each case once."""

    def __init__(
        self,
        arms: Mapping[str, Arm],
        plan: PairedPlan,
        *,
        progress: Callable[[str], None] = lambda _message: None,
        on_round: Callable[[PairedRun], None] = lambda _run: None,
        tolerance: float = 0.02,
    ) -> None:
        if set(arms) != set(ARM_NAMES):
            raise ValueError(f"a paired measurement has arms A and B, got {sorted(arms)}")
        self.arms = dict(arms)
        self.plan = plan
        self.tolerance = tolerance  # the smallest change that counts
        self.progress = progress
        self.on_round = on_round  # sees the run after every round: persist it there
        self._active: Arm | None = None
        self._paired: dict[Case, PairedRun] = {}

    def run(self, case: Case) -> PairedRun:
        if case not in self._paired:
            self._paired[case] = self._measure(case)
        return self._paired[case]

    def close(self) -> None:
        for arm in self.arms.values():
            if arm.server is not None:
                arm.server.stop()
            arm.runner.close()

    # --- one case ---------------------------------------------------------------------

    def _measure(self, case: Case) -> PairedRun:
        seed = (
            self.plan.seed if self.plan.seed is not None else random.SystemRandom().getrandbits(32)
        )
        paired = PairedRun(case, seed)
        rng = random.Random(seed)
        started = time.perf_counter()
        for name in ARM_NAMES:  # load each arm once: skips and load errors show up now
            run = self._switch_to(self.arms[name], case, prepare=True)
            paired.runs[name] = run
            if run.skipped or run.error:
                paired.skipped, paired.error = run.skipped, run.error and f"arm {name}: {run.error}"
                return paired
        self._deactivate(case)
        sequential = self.plan.sequential
        round_s = 0.0
        while True:
            elapsed = time.perf_counter() - started
            kept = len(paired.kept)
            if kept >= sequential.max_rounds:
                paired.stop_reason = f"the plan's {sequential.max_rounds} rounds"
                break
            if kept and elapsed + round_s > self.plan.budget_s:
                paired.stop_reason = (
                    f"the {self.plan.budget_s:.0f} s budget per case "
                    f"(--lmgauge-paired-budget-s) after {kept} rounds"
                )
                break
            if len(paired.discarded) > self.plan.max_discarded:
                paired.stop_reason = f"{len(paired.discarded)} disturbed rounds"
                break
            if paired.rounds and self.plan.cooldown_s:
                time.sleep(self.plan.cooldown_s)
            round_started = time.perf_counter()
            try:
                round_ = self._round(case, len(paired.rounds), rng, paired)
            except LmgaugeError as exc:  # e.g. a server that died: the rounds so far stand
                paired.error = (
                    f"round {len(paired.rounds) + 1} failed: {type(exc).__name__}: {exc} "
                    f"({len(paired.kept)} rounds measured before it are in the report)"
                )
                paired.stop_reason = "an error"
                break
            paired.rounds.append(round_)
            round_s = time.perf_counter() - round_started
            paired.elapsed_s = time.perf_counter() - started
            self.on_round(paired)
            kept = len(paired.kept)
            if round_.discarded is None and sequential.is_look(kept):
                self._judge(paired)
                if should_stop(self._holding_verdicts(paired), kept, sequential):
                    paired.stop_reason = (
                        f"every metric settled after {kept} rounds"
                        if kept < sequential.max_rounds
                        else f"the plan's {sequential.max_rounds} rounds"
                    )
                    break
        if len(paired.kept) and not sequential.is_look(len(paired.kept)):
            self._judge(paired)  # stopped between looks: this one replaces the next look
        try:
            self._deactivate(case)
        except LmgaugeError as exc:
            paired.error = paired.error or f"{type(exc).__name__}: {exc}"
        paired.elapsed_s = time.perf_counter() - started
        paired.not_gated = self._not_gated(paired)
        self.on_round(paired)
        return paired

    def _round(self, case: Case, index: int, rng: random.Random, paired: PairedRun) -> Round:
        order = tuple(rng.sample(ARM_NAMES, 2))
        round_ = Round(index, order)
        for name in order:
            arm = self.arms[name]
            load_s = self._switch_to_timed(arm, case)
            monitor = DisturbanceMonitor(extra_pids=arm.pids())
            monitor.start()
            # No warm-up: the first request after a load is slower on both arms alike, and
            # the median of k >= 3 samples passes over it.
            samples = arm.runner.more_samples(
                case, self.plan.samples_per_arm, seed_offset=ARM_SEED_OFFSET[name]
            )
            disturbance = monitor.stop()
            memory = arm.runner.memory()
            round_.arms[name] = ArmRound(
                samples, round_medians(samples, load_s), disturbance, load_s, memory.rss_bytes
            )
            why = disturbance.disturbed(self.plan.disturbance_limit)
            if why and round_.discarded is None:
                round_.discarded = f"arm {name}: {why}"
        self.progress(self._describe_round(round_, paired))
        return round_

    def _describe_round(self, round_: Round, paired: PairedRun) -> str:
        if round_.discarded:
            return f"{paired.case.id}: round {round_.index + 1} discarded ({round_.discarded})"
        decode = round_.ratio("decode_tokens_per_s")
        ratio = f"; decode B/A {decode:.3f}" if decode is not None else ""
        kept = len(paired.kept) + 1
        return (
            f"{paired.case.id}: round {kept} of {self.plan.sequential.min_rounds}-"
            f"{self.plan.sequential.max_rounds} ({' then '.join(round_.order)}){ratio}"
        )

    def _judge(self, paired: PairedRun) -> None:
        for metric in ROUND_METRICS:
            ratios = paired.ratios(metric)
            if len(ratios) < 2:
                continue
            paired.verdicts[metric] = judge_paired(
                ratios,
                metric=metric,
                higher_is_better=higher_is_better(metric),
                tolerance=self.tolerance,
                plan=self.plan.sequential,
            )

    @staticmethod
    def _holding_verdicts(paired: PairedRun) -> list[PairedVerdict]:
        """The verdicts that keep a case open while inconclusive: the sample metrics.
        Load time is judged at every look too, but from the rounds where both arms were
        loaded afresh (about half: see _switch_to_timed), so it may not hold the case."""
        return [v for metric, v in paired.verdicts.items() if metric != "load_s"]

    def _not_gated(self, paired: PairedRun) -> str | None:
        discarded, kept = len(paired.discarded), len(paired.kept)
        if discarded <= kept and kept >= 2:
            return None
        shares = [
            arm.disturbance.other_cpu_share for r in paired.discarded for arm in r.arms.values()
        ]
        worst = f": other processes used {max(shares):.0%} of the CPU" if shares else ""
        return (
            f"not gated{worst} ({discarded} of {discarded + kept} rounds disturbed past "
            f"{self.plan.disturbance_limit:.0%}); run it again on a quiet machine"
        )

    # --- switching arms ------------------------------------------------------------------

    def _switch_to(self, arm: Arm, case: Case, *, prepare: bool = False) -> CaseRun:
        """Make ``arm`` the one whose model is loaded (and whose server runs)."""
        if self._active is not None and self._active is not arm:
            self._deactivate(case)
        if arm.server is not None and not arm.server.running:
            arm.runner.reset_backend(arm.server.start())
        self._active = arm
        if prepare:
            return arm.runner.prepare(case)
        return arm.runner.run(case)

    def _switch_to_timed(self, arm: Arm, case: Case) -> float | None:
        """Switch to ``arm`` with a fresh load of its model (or a restart of its server);
        its load time, or None where ``arm`` ran last and stays loaded.

        Where one round ends with the arm the next begins with (half the time, as orders
        are drawn at random), there is no switch and no reload: which arm that favours is
        random too. Reloading there as well cost ~0.7 s of every ~4 s stretch on the 0.6B
        case, and measured on this 2-core VM it did not change the spread between
        stretches (a kept model's stretch medians swung as much as fresh loads'): that
        spread is the machine's, over seconds.
        """
        if self._active is arm:
            return None
        self._switch_to(arm, case)
        load = arm.runner.load(case)
        return None if load.already_loaded else load.load_s

    def _deactivate(self, case: Case) -> None:
        arm = self._active
        if arm is None:
            return
        arm.runner.unload(case)
        if arm.server is not None:
            arm.server.stop()
        self._active = None
