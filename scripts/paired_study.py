"""Detection and false-alarm rates of the paired gate against the stored-baseline gate,
on lmgauge.testing's token server with a drift profile (every timing swings by ±20% over
minutes, as run medians drift on a shared 2-core VM) and an arm made exactly X% slower.

Two token-server processes are the arms: A at slowdown 1.0, B at 1 + effect, sharing
one drift clock (the same epoch), each with per-request log-normal noise. For each
condition (A/A, 5%, 10% slower), N runs are made, each both ways:
- paired: lmgauge.paired.PairedMeasurement, the code path of `pytest --lmgauge-against`
  (Runner + Ollama backend + measure_one + paired_stats.judge_paired);
- stored: today's gate, judge.against_baseline, against a baseline of 3 single-arm runs of
  arm A recorded at the start of the study (as a user records one), each later run being a
  single-arm run of arm B with the same samples as one paired arm.
A run "flags" when any of the client metrics (decode, TTFT, ITL, E2E, prefill) is called
a regression. Rates come with Wilson 95% intervals.

    .venv/bin/python scripts/paired_study.py --runs 50 --out /tmp/paired-study.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from lmgauge.baselines import MetricBaseline
from lmgauge.judge import against_baseline
from lmgauge.metrics import sample_values
from lmgauge.paired import ROUND_METRICS, Arm, PairedMeasurement, PairedPlan
from lmgauge.paired_stats import SequentialPlan
from lmgauge.runner import Case, Runner, Workload
from lmgauge.server_env import find_server_process
from lmgauge.testing import Schedule, serve_in_process

CASE = Case("ollama", "qwen3-0.6b", "Q4_K_M", 4096)  # the token server speaks NDJSON too
GATED = ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_s", "itl_s", "e2e_s")


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927), 95% by default."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@contextlib.contextmanager
def arms_servers(schedule: Schedule, effect: float) -> Iterator[tuple[str, str]]:
    slow = replace(schedule, slowdown=1.0 + effect, seed=schedule.seed + 1)
    with serve_in_process(schedule=schedule) as url_a, serve_in_process(schedule=slow) as url_b:
        yield url_a, url_b


def _pids(url: str) -> tuple[int, ...]:
    try:
        return (find_server_process(url, names=("python",)).pid,)
    except (LookupError, PermissionError):
        return ()


def paired_run(url_a: str, url_b: str, workload: Workload, plan: PairedPlan) -> dict[str, Any]:
    arms = {
        "A": Arm(
            "A", "token server A", Runner("ollama", workload, base_url=url_a), None, _pids(url_a)
        ),
        "B": Arm(
            "B", "token server B", Runner("ollama", workload, base_url=url_b), None, _pids(url_b)
        ),
    }
    measurement = PairedMeasurement(arms, plan, tolerance=0.02)
    try:
        paired = measurement.run(CASE)
    finally:
        measurement.close()
    outcomes = {m: v.outcome for m, v in paired.verdicts.items() if m in GATED}
    if paired.error or paired.skipped:
        raise SystemExit(f"the paired run failed: {paired.error or paired.skipped}")
    return {
        "outcomes": outcomes,
        "ratios": {m: v.ratio for m, v in paired.verdicts.items() if m in GATED},
        "detectable": {m: v.detectable_change for m, v in paired.verdicts.items() if m in GATED},
        "rounds": len(paired.kept),
        "discarded": len(paired.discarded),
        "not_gated": paired.not_gated,
        "elapsed_s": paired.elapsed_s,
    }


def single_arm(url: str, workload: Workload) -> dict[str, list[float]]:
    runner = Runner("ollama", workload, base_url=url)
    try:
        run = runner.run(CASE)
        return {m: sample_values(run.samples, m) for m in GATED}
    finally:
        runner.close()


def stored_verdicts(
    baseline: dict[str, MetricBaseline], values: dict[str, list[float]]
) -> dict[str, str]:
    outcomes = {}
    for metric in GATED:
        failures: list[str] = []
        judgement = against_baseline(
            metric,
            values[metric],
            baseline[metric],
            [],
            tolerance=0.05,
            allow_unlike=False,
            failures=failures,
        )
        outcomes[metric] = judgement.outcome
    return outcomes


def record_baseline(
    url: str, workload: Workload, runs: int, gap_s: float
) -> dict[str, MetricBaseline]:
    recorded: list[dict[str, list[float]]] = []
    for index in range(runs):
        if index:
            time.sleep(gap_s)
        recorded.append(single_arm(url, workload))
    return {
        metric: MetricBaseline(
            values=tuple(v for run in recorded for v in run[metric]),
            provenance="measured",
            run_medians=tuple(statistics.median(run[metric]) for run in recorded),
        )
        for metric in GATED
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="runs per condition")
    parser.add_argument("--effects", default="0,0.05,0.10")
    parser.add_argument("--drift-amplitude", type=float, default=0.2)
    parser.add_argument("--drift-period-s", type=float, default=240.0)
    parser.add_argument("--noise-sd", type=float, default=0.02)
    parser.add_argument("--samples-per-arm", type=int, default=3)
    parser.add_argument("--rounds", default="12:4:24")
    parser.add_argument("--gap-s", type=float, default=20.0, help="between baseline runs")
    parser.add_argument(
        "--disturbance-limit", type=float, default=0.25, help="1 turns the guard off"
    )
    parser.add_argument("--out", default="/tmp/paired-study.json")
    args = parser.parse_args(argv)
    low, step, high = (int(x) for x in args.rounds.split(":"))
    schedule = Schedule(
        ttft_s=0.010,
        itl_s=0.003,
        drift_amplitude=args.drift_amplitude,
        drift_period_s=args.drift_period_s,
        drift_epoch=0.0,
        noise_sd=args.noise_sd,
        seed=7,
    )
    paired_workload = Workload(prompt_tokens=32, max_tokens=8, samples=0, warmups=0)
    stored_samples = args.samples_per_arm * low  # as many as one arm of a shortest paired run
    stored_workload = Workload(prompt_tokens=32, max_tokens=8, samples=stored_samples)
    plan = PairedPlan(
        samples_per_arm=args.samples_per_arm,
        sequential=SequentialPlan(
            min_rounds=low, step_rounds=step, max_rounds=high, metrics=len(ROUND_METRICS)
        ),
        disturbance_limit=args.disturbance_limit,
    )
    effects = [float(e) for e in args.effects.split(",")]
    results: dict[str, Any] = {"args": vars(args), "conditions": {}}
    with arms_servers(schedule, 0.0) as (url_a0, _unused):
        print(
            f"recording the stored baseline: 3 runs of arm A, {args.gap_s:.0f} s apart", flush=True
        )
        baseline = record_baseline(url_a0, stored_workload, 3, args.gap_s)
        results["baseline_run_medians"] = {m: baseline[m].run_medians for m in GATED}
        for effect in effects:
            runs = []
            with arms_servers(schedule, effect) as (url_a, url_b):
                for index in range(args.runs):
                    paired = paired_run(url_a, url_b, paired_workload, plan)
                    stored = stored_verdicts(baseline, single_arm(url_b, stored_workload))
                    runs.append({"paired": paired, "stored": stored})
                    flagged = [m for m, o in paired["outcomes"].items() if o == "regression"]
                    stored_flagged = [m for m, o in stored.items() if o == "regression"]
                    print(
                        f"effect {effect:.0%} run {index + 1}/{args.runs}: paired "
                        f"{paired['rounds']} rounds, regression in {flagged or 'none'}; stored "
                        f"regression in {stored_flagged or 'none'}",
                        flush=True,
                    )
            results["conditions"][f"{effect:g}"] = runs
            with open(args.out, "w") as handle:
                json.dump(results, handle, indent=1)
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    lines = [
        "| condition | gate | runs | flagged a regression | rate | Wilson 95% |",
        "|---|---|---|---|---|---|",
    ]
    for effect, runs in results["conditions"].items():
        name = "A/A" if float(effect) == 0 else f"B {float(effect):.0%} slower"
        for gate in ("paired", "stored"):
            flagged = sum(
                any(
                    o == "regression"
                    for o in (r[gate]["outcomes"] if gate == "paired" else r[gate]).values()
                )
                for r in runs
            )
            low, high = wilson(flagged, len(runs))
            lines.append(
                f"| {name} | {gate} | {len(runs)} | {flagged} | {flagged / len(runs):.0%} | "
                f"{low:.1%}-{high:.1%} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
