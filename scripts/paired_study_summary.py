"""Summarise a study made by scripts/engine_paired_study.sh: per kind of run (aa, ab), how
many runs flagged a regression on a client metric, with the Wilson 95% interval, and per
run the outcome, rounds and the TTFT / decode estimates with their intervals.

    .venv/bin/python scripts/paired_study_summary.py OUT
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from paired_study import GATED, wilson  # scripts/ is on sys.path when run as a script


def summarise(out: Path) -> None:
    runs: dict[str, list[dict[str, object]]] = {"aa": [], "ab": []}
    folders = [p for p in out.glob("a[ab]-*") if p.is_dir()]
    for folder in sorted(folders, key=lambda p: (p.name[:2], int(p.name[3:]))):
        reports = sorted(folder.glob("*.json"))
        if not reports:
            continue
        case = next(iter(json.loads(reports[-1].read_text())["cases"].values()))
        paired = case.get("paired") or {}
        if not paired.get("stop_reason"):
            continue  # a run still going (its report is rewritten after every round)
        verdicts = paired.get("verdicts", {})
        flagged = [m for m in GATED if verdicts.get(m, {}).get("outcome") == "regression"]
        runs[folder.name[:2]].append(
            {
                "run": folder.name,
                "flagged": flagged,
                "kept": paired.get("kept_rounds"),
                "discarded": paired.get("discarded_rounds"),
                "elapsed_s": paired.get("elapsed_s"),
                "not_gated": paired.get("not_gated"),
                "ttft": verdicts.get("ttft_s", {}),
                "decode": verdicts.get("decode_tokens_per_s", {}),
            }
        )
    for kind, items in runs.items():
        if not items:
            continue
        n, hits = len(items), sum(bool(r["flagged"]) for r in items)
        low, high = wilson(hits, n)
        elapsed = statistics.median(float(str(r["elapsed_s"] or 0)) for r in items)
        print(
            f"{kind}: {hits} of {n} runs flagged a regression "
            f"(Wilson 95% {low:.1%}-{high:.1%}); median {elapsed:.0f} s per case"
        )
        for r in items:
            ttft, decode = r["ttft"], r["decode"]
            assert isinstance(ttft, dict)
            assert isinstance(decode, dict)
            print(
                f"  {r['run']}: flagged {r['flagged'] or '-'}; {r['kept']} rounds kept, "
                f"{r['discarded']} discarded; TTFT B/A {_span(ttft)}; decode B/A "
                f"{_span(decode)}{'; ' + str(r['not_gated']) if r['not_gated'] else ''}"
            )


def _span(verdict: dict[str, object]) -> str:
    if not verdict:
        return "-"
    return (
        f"{verdict['ratio']:.3f} [{verdict['ratio_low']:.3f}-{verdict['ratio_high']:.3f}] "
        f"{verdict['outcome']}"
    )


if __name__ == "__main__":
    summarise(Path(sys.argv[1]))
