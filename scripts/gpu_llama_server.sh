#!/usr/bin/env bash
# llama-server with CUDA on an NVIDIA GPU, measured by lmgauge (issue 14, item 8).
#
# Builds llama.cpp's llama-server, llama-bench and llama-quantize with CUDA from SRC (the
# llama.cpp tree vendored in the llama-cpp-python 0.3.36 sdist, the same source as the CPU
# build), writes the synthetic Qwen3-8B shape with lmgauge's generator (F16) and quantizes
# it to Q4_K_M with llama-quantize, runs llama-bench, then starts llama-server with
# --parallel 64 and sweeps 1..64 concurrent streams with lmgauge's own client
# (scripts/concurrency_sweep.py). Everything it measures goes to OUT.
#
#   scripts/gpu_llama_server.sh SRC OUT [CUDA_ARCH (90)]
set -euo pipefail
src=$1 out=$2 arch=${3:-90}
export PYTHONPATH=$PWD/lib${PYTHONPATH:+:$PYTHONPATH}
export LMGAUGE_CACHE_DIR=${LMGAUGE_CACHE_DIR:-/tmp/lmgauge-cache}
build=/tmp/llama-cuda-build
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

started=$SECONDS
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >"$out/cmake.log" 2>&1
cmake --build "$build" --target llama-server llama-bench llama-quantize \
    --parallel "$(nproc)" >"$out/build.log" 2>&1
echo "build_s=$((SECONDS - started))"
"$build/bin/llama-server" --version 2>&1 | tail -n 2

started=$SECONDS
f16=$(python3 -c "from lmgauge.synthetic import synthetic_gguf; print(synthetic_gguf('qwen3-8b', 'F16'))")
echo "f16_write_s=$((SECONDS - started)) $(stat -c %s "$f16") bytes"
q4=${f16%-F16.gguf}-Q4_K_M.gguf
started=$SECONDS
"$build/bin/llama-quantize" "$f16" "$q4" Q4_K_M "$(nproc)" >"$out/quantize.log" 2>&1
echo "quantize_s=$((SECONDS - started)) $(stat -c %s "$q4") bytes"
rm -f "$f16"

"$build/bin/llama-bench" -m "$q4" -ngl 99 -p 512 -n 128 -r 3 -o json \
    >"$out/llama-bench.json" 2>"$out/llama-bench.log"
python3 - "$out/llama-bench.json" <<'PY'
import json, sys
for t in json.load(open(sys.argv[1])):
    print(f"llama-bench pp{t['n_prompt']} tg{t['n_gen']}: {t['avg_ts']:.1f} ± {t['stddev_ts']:.1f} t/s")
PY

port=8099
"$build/bin/llama-server" -m "$q4" -ngl 99 --parallel 64 --ctx-size $((64 * 1024)) \
    --host 127.0.0.1 --port "$port" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
python3 - "$port" <<'PY'
import sys, time, httpx
url = f"http://127.0.0.1:{sys.argv[1]}/health"
for _ in range(600):
    try:
        if httpx.get(url, timeout=1).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.5)
else:
    sys.exit("llama-server did not get ready")
PY
python3 scripts/concurrency_sweep.py "http://127.0.0.1:$port" "$(basename "$q4")" \
    --levels 1,2,4,8,16,32,64 --rounds 2 --max-tokens 128 --prompt-words 100 \
    --bandwidth-gb-s "${BANDWIDTH_GB_S:-3350}" --weights-bytes "$(stat -c %s "$q4")" \
    --out "$out/sweep.json"
