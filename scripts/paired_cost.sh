#!/usr/bin/env bash
# Wall time of the paired gate against a single-arm run with the same samples per arm, on
# the 0.6B case, interleaved single, paired, single, paired (issue 13's cost figure):
#   scripts/paired_cost.sh OUT
set -uo pipefail
cd "$(dirname "$0")/.."
out=$1
select='qwen3-0.6b and (decode or prefill or ttft or itl or e2e)'
config=configs/llamacpp-embedded.toml
common=(benchmarks/test_serving.py -k "$select" --lmgauge-config "$config"
        --lmgauge-max-tokens 8 -p no:cacheprovider -q)
mkdir -p "$out"
for i in 1 2; do
    .venv/bin/pytest "${common[@]}" --lmgauge-samples 36 --lmgauge-max-samples 36 \
        --lmgauge-report-dir "$out/single-$i" >"$out/single-$i.log" 2>&1
    .venv/bin/pytest "${common[@]}" --lmgauge-against "$config" --lmgauge-rounds 12:4:12 \
        --lmgauge-report-dir "$out/paired-$i" >"$out/paired-$i.log" 2>&1
done
grep -h "passed" "$out"/*.log
