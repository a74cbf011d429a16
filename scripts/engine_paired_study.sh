#!/usr/bin/env bash
# False-alarm and detection rates of the paired gate on the real embedded engine: N paired
# A/A runs (the base config against itself) and M paired A/B runs (a candidate config with
# a real effect against the base), interleaved AA, AB, AA, ... so the machine's drift over
# the study falls on both kinds alike. Each run is the user's command:
#   pytest benchmarks/test_serving.py -k CASE --lmgauge-config B --lmgauge-against A
# Outputs: one report folder and log per run under OUT, and OUT/summary.txt with each run's
# exit code (1 = a regression was flagged) and wall time; summarise with
#   .venv/bin/python scripts/paired_study_summary.py OUT
#
#   scripts/engine_paired_study.sh OUT CANDIDATE.toml N_AA N_AB [extra pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
out=$1 candidate=$2 n_aa=$3 n_ab=$4
shift 4
base=configs/llamacpp-embedded.toml
select='qwen3-0.6b and (decode or prefill or ttft or itl or e2e)'
mkdir -p "$out"
run() {  # kind index config [extra pytest args...]
    local kind=$1 index=$2 config=$3 started=$SECONDS
    shift 3
    .venv/bin/pytest benchmarks/test_serving.py -k "$select" --lmgauge-config "$config" \
        --lmgauge-against "$base" --lmgauge-report-dir "$out/$kind-$index" \
        -p no:cacheprovider -q "$@" >"$out/$kind-$index.log" 2>&1
    echo "$kind $index rc=$? wall_s=$((SECONDS - started))" >>"$out/summary.txt"
}
aa=0 ab=0
while [ "$aa" -lt "$n_aa" ] || [ "$ab" -lt "$n_ab" ]; do
    # two A/A runs for every A/B run until one kind is done
    for kind in aa ab aa; do
        if [ "$kind" = aa ] && [ "$aa" -lt "$n_aa" ]; then
            aa=$((aa + 1)); run aa "$aa" "$base" "$@"
        elif [ "$kind" = ab ] && [ "$ab" -lt "$n_ab" ]; then
            ab=$((ab + 1)); run ab "$ab" "$candidate" "$@"
        fi
    done
done
echo done >>"$out/summary.txt"
