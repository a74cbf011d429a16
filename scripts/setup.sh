#!/usr/bin/env bash
# Set up .venv from the project's own files: lmgauge with its dev tools, the embedded
# llama.cpp engine, llama.cpp's own llama-server, llama-bench and llama-quantize, and
# mlx-lm (Metal on Apple Silicon, MLX's CPU build on Linux).
#
# PyPI ships llama-cpp-python as source only; installing it compiles llama.cpp with
# -march=native. The tools are built from the llama.cpp tree vendored in that same sdist,
# in the wheel's own CMake build tree, so ggml and llama compile once for both (about
# 12 minutes on 2 cores in all). Wheel and tools are built once per CPU, Python and build
# recipe and kept under ~/.cache/lmgauge/wheels/ (or $LMGAUGE_CACHE_DIR/wheels/), so later
# set-ups (CI included) take seconds. A build for one CPU may not run on another, hence
# the key.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_TOOLS=(llama-server llama-bench llama-quantize)
PYTHON=${PYTHON:-python3}
CACHE=${LMGAUGE_CACHE_DIR:-$HOME/.cache/lmgauge}

# CMake flags for both build stages (the wheel's, then the tools').
case "$(uname -s)" in
    Darwin) origin=@loader_path ;;
    *) origin='$ORIGIN' ;;
esac
LLAMA_CMAKE_FLAGS=(
    -DLLAMA_CURL=OFF                 # no libcurl, no model downloads (the wheel forces it too)
    -DLLAMA_OPENSSL=OFF              # no HTTPS client, so no OpenSSL to find or link
    -DLLAMA_BUILD_UI=OFF             # no web UI for llama-server (building it needs npm)...
    -DLLAMA_USE_PREBUILT_UI=OFF      # ...nor a prebuilt one (that is a download): offline
    -DLLAMA_BUILD_TESTS=OFF          # llama.cpp's own tests and examples: not needed
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON  # tools find their shared libraries beside
    "-DCMAKE_BUILD_RPATH=$origin"      # themselves, wherever the folder is copied to
)
# The second stage, in the same tree. llama-cpp-python's CMakeLists adds tools/mtmd itself
# (LLAVA_BUILD), and so does llama.cpp's tools/ folder: both at once fail to configure
# ("binary directory ... is already used"), so the wheel is built first with LLAVA_BUILD on,
# then the tree is reconfigured with tools/ taking over mtmd. ggml, llama and common keep
# their compile commands and are not compiled again; mtmd is (tools/ adds warning flags),
# about 2 CPU-minutes.
LLAMA_TOOLS_CMAKE_FLAGS=(
    -DLLAVA_BUILD=OFF                # tools/ adds mtmd (llama-server links it)
    -DLLAMA_BUILD_TOOLS=ON           # llama-bench, llama-quantize (and llama-server's folder)
    -DLLAMA_BUILD_SERVER=ON          # llama-server
)

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip

recipe="${LLAMA_CMAKE_FLAGS[*]} ${LLAMA_TOOLS_CMAKE_FLAGS[*]} ${LLAMA_TOOLS[*]} ${CMAKE_ARGS:-}"
key=$(.venv/bin/python - "$LLAMA_CPP_PYTHON_VERSION" "$recipe" <<'PY'
import hashlib, pathlib, platform, subprocess, sys
flags = ""
cpuinfo = pathlib.Path("/proc/cpuinfo")
if cpuinfo.exists():
    flags = next((l for l in cpuinfo.read_text().splitlines() if l.startswith("flags")), "")
elif platform.system() == "Darwin":
    flags = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                           capture_output=True, text=True).stdout
seed = "|".join([platform.machine(), flags, sys.version.split()[0], *sys.argv[1:]])
print(hashlib.sha256(seed.encode()).hexdigest()[:16])
PY
)
cached="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$key"

cache_complete() {  # the cache entry has the wheel and every tool
    compgen -G "$1/llama_cpp_python-*.whl" >/dev/null || return 1
    for tool in "${LLAMA_TOOLS[@]}"; do [ -x "$1/bin/$tool" ] || return 1; done
}

if ! cache_complete "$cached"; then
    echo "Building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION and llama.cpp's tools for this" \
         "CPU: llama.cpp compiles once per machine (about 12 minutes on 2 cores)..." >&2
    started=$SECONDS
    partial="$cached.partial-$$"
    rm -rf "$partial" && mkdir -p "$partial"
    src="$partial/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
    build="$partial/build"
    buildenv="$partial/buildenv"

    # Our own unpacked sdist, build folder and build environment (pip's would be deleted
    # with the wheel built), so that the second stage can reconfigure the same tree.
    .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$partial"
    tar -xzf "$partial/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$partial"
    .venv/bin/python -m venv "$buildenv"
    # As pip's isolated build would: the system's CMake (3.21 or newer) and Ninja if there
    # are, else those from PyPI.
    requires=("scikit-build-core[pyproject]>=0.9.2")
    cmake_version=$(cmake --version 2>/dev/null | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p')
    if [ -z "$cmake_version" ] \
            || [ "$(printf '%s\n' 3.21 "$cmake_version" | sort -V | head -n 1)" != 3.21 ]; then
        requires+=(cmake)
    fi
    command -v ninja >/dev/null || requires+=(ninja)
    "$buildenv/bin/python" -m pip install --quiet "${requires[@]}"
    export PATH="$buildenv/bin:$PATH"  # for this build only: the folder goes below

    # Stage 1: the wheel, keeping its CMake tree in $build.
    CMAKE_ARGS="${CMAKE_ARGS:-} ${LLAMA_CMAKE_FLAGS[*]}" \
        "$buildenv/bin/python" -m pip wheel --no-deps --no-build-isolation --no-cache-dir \
        --config-settings=build-dir="$build" "$src" -w "$partial"
    wheel_built=$SECONDS
    # Stage 2: the tools, in the same tree (only they and what they add get compiled).
    cmake -S "$src" -B "$build" -Wno-dev "${LLAMA_TOOLS_CMAKE_FLAGS[@]}" >/dev/null
    cmake --build "$build" --target "${LLAMA_TOOLS[@]}" \
        --parallel "$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"

    mkdir "$partial/bin"
    for tool in "${LLAMA_TOOLS[@]}"; do cp "$build/bin/$tool" "$partial/bin/"; done
    find "$build/bin" -maxdepth 1 \( -name 'lib*.so*' -o -name 'lib*.dylib' \) \
        -exec cp -P {} "$partial/bin/" \;
    if [ "$(uname -s)" != Darwin ]; then
        # CMake leaves an empty entry in some RUNPATHs ("$ORIGIN:"), which the loader reads
        # as the working directory: make every one exactly $ORIGIN.
        cat >"$partial/rpath.cmake" <<'CMAKE'
file(GLOB files LIST_DIRECTORIES false "${DIR}/*")
foreach(f IN LISTS files)
    if(NOT IS_SYMLINK "${f}")
        file(RPATH_SET FILE "${f}" NEW_RPATH "$ORIGIN")
    endif()
endforeach()
CMAKE
        cmake -DDIR="$partial/bin" -P "$partial/rpath.cmake" >/dev/null
    fi
    rm -rf "$src" "$build" "$buildenv" "$partial"/*.tar.gz "$partial/rpath.cmake"
    # With the build tree gone, the tools must find their libraries beside themselves.
    "$partial/bin/llama-server" --version >/dev/null 2>&1 || {
        echo "the llama-server just built does not run:" >&2
        "$partial/bin/llama-server" --version >&2 || true
        exit 1
    }
    rm -rf "$cached" && mv "$partial" "$cached"
    echo "Built the wheel in $((wheel_built - started)) s, the tools in" \
         "$((SECONDS - wheel_built)) s: $cached" >&2
fi
.venv/bin/python -m pip install --quiet "$cached"/llama_cpp_python-*.whl
.venv/bin/python -m pip install --quiet -e ".[dev,llamacpp,mlx]"

# The tools, with their shared libraries, in .venv/lib/llama.cpp/ (a copy: the venv keeps
# working if the cache is cleared), and on .venv/bin through links.
rm -rf .venv/lib/llama.cpp && cp -RP "$cached/bin" .venv/lib/llama.cpp
for tool in "${LLAMA_TOOLS[@]}"; do ln -sfn "../lib/llama.cpp/$tool" ".venv/bin/$tool"; done
.venv/bin/llama-server --version >/dev/null 2>&1 \
    || { echo ".venv/bin/llama-server does not run" >&2; exit 1; }
echo "Set up .venv (llama-cpp-python wheel and llama.cpp tools: $cached)" >&2
