#!/usr/bin/env bash
# Set up .venv from the project's own files: lmgauge with its dev tools, the embedded
# llama.cpp engine and mlx-lm (Metal on Apple Silicon, MLX's CPU build on Linux).
#
# PyPI ships llama-cpp-python as source only; installing it compiles llama.cpp with
# -march=native (about 6 minutes on 2 cores). The wheel is built once per CPU and Python
# and kept under ~/.cache/lmgauge/wheels/, so later set-ups (CI included) take seconds.
# A wheel built for one CPU may not run on another, hence the key.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON_VERSION=0.3.36
PYTHON=${PYTHON:-python3}
CACHE=${LMGAUGE_CACHE_DIR:-$HOME/.cache/lmgauge}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip

key=$(.venv/bin/python - "$LLAMA_CPP_PYTHON_VERSION" <<'PY'
import hashlib, pathlib, platform, subprocess, sys
flags = ""
cpuinfo = pathlib.Path("/proc/cpuinfo")
if cpuinfo.exists():
    flags = next((l for l in cpuinfo.read_text().splitlines() if l.startswith("flags")), "")
elif platform.system() == "Darwin":
    flags = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                           capture_output=True, text=True).stdout
seed = "|".join([platform.machine(), flags, sys.version.split()[0], sys.argv[1]])
print(hashlib.sha256(seed.encode()).hexdigest()[:16])
PY
)
wheels="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$key"
if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
    echo "Building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION for this CPU: llama.cpp compiles" \
         "once per machine (about 6 minutes on 2 cores)..." >&2
    partial="$wheels.partial-$$"
    rm -rf "$partial" && mkdir -p "$partial"
    .venv/bin/python -m pip wheel --no-deps --no-cache-dir \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -w "$partial"
    rm -rf "$wheels" && mv "$partial" "$wheels"
fi
.venv/bin/python -m pip install --quiet "$wheels"/llama_cpp_python-*.whl
.venv/bin/python -m pip install --quiet -e ".[dev,llamacpp,mlx]"
echo "Set up .venv (llama-cpp-python wheel: $wheels)" >&2
