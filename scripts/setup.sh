#!/usr/bin/env bash
# Set up .venv from the project's own files: lmgauge with its dev tools, the embedded
# llama.cpp engine, and mlx-lm (Metal on Apple Silicon, MLX's CPU build on Linux).
#   scripts/setup.sh                     what the benchmarks need
#   scripts/setup.sh --with-llama-tools  also llama.cpp's own llama-server, llama-bench and
#                                        llama-quantize (their tests and the cross-check
#                                        use them; .ci/run builds them)
#
# PyPI ships llama-cpp-python as source only; installing it compiles llama.cpp with
# -march=native. Only what the Python engine loads is compiled: ggml and libllama, not
# the multimodal library nor llama.cpp's common library (llama-cpp-python builds both by
# default; neither is loaded by lmgauge). The tools are built from the llama.cpp tree
# vendored in the same sdist; built together with the wheel they share its CMake tree,
# so ggml and llama compile once. Everything built is kept under ~/.cache/lmgauge/wheels/
# (or $LMGAUGE_CACHE_DIR/wheels/) per CPU, Python and build recipe, so later set-ups (CI
# included) take seconds. A build for one CPU may not run on another, hence the key.
# Compiler output goes to a log; the terminal shows the build's progress.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TOOLS=0
for arg in "$@"; do
    case "$arg" in
        --with-llama-tools) WITH_TOOLS=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "scripts/setup.sh: unknown argument '$arg' (known: --with-llama-tools)" >&2
           exit 2 ;;
    esac
done

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_TOOLS=(llama-server llama-bench llama-quantize)
PYTHON=${PYTHON:-python3}
CACHE=${LMGAUGE_CACHE_DIR:-$HOME/.cache/lmgauge}
JOBS=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)

# CMake flags for every build (the wheel's, the tools').
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
    -DLLAVA_BUILD=OFF                # llama-cpp-python's multimodal library: never loaded
    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON  # tools find their shared libraries beside
    "-DCMAKE_BUILD_RPATH=$origin"      # themselves, wherever the folder is copied to
)
# The wheel alone: no common library. llama-cpp-python's CMakeLists forces it on (FORCE
# in the cache, which no -D overrides); our unpacked copy has that line taken out below.
WHEEL_CMAKE_FLAGS=(-DLLAMA_BUILD_COMMON=OFF)
# The tools: llama.cpp's tools/ folder adds them, common and mtmd (llama-server links it).
LLAMA_TOOLS_CMAKE_FLAGS=(
    -DLLAMA_BUILD_COMMON=ON
    -DLLAMA_BUILD_TOOLS=ON           # llama-bench, llama-quantize (and llama-server's folder)
    -DLLAMA_BUILD_SERVER=ON          # llama-server
)
FORCED_COMMON='set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)'

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip

wheel_recipe="${LLAMA_CMAKE_FLAGS[*]} ${WHEEL_CMAKE_FLAGS[*]} ${CMAKE_ARGS:-}"
tools_recipe="${LLAMA_CMAKE_FLAGS[*]} ${LLAMA_TOOLS_CMAKE_FLAGS[*]} ${LLAMA_TOOLS[*]} ${CMAKE_ARGS:-}"
cache_key() {
    .venv/bin/python - "$LLAMA_CPP_PYTHON_VERSION" "$1" <<'PY'
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
}
cached="$CACHE/wheels/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$(cache_key "$wheel_recipe")"
tools_dir="$cached/tools-$(cache_key "$tools_recipe")"

have_wheel() { compgen -G "$cached/llama_cpp_python-*.whl" >/dev/null; }
have_tools() {
    for tool in "${LLAMA_TOOLS[@]}"; do [ -x "$tools_dir/$tool" ] || return 1; done
}
need_tools() { [ "$WITH_TOOLS" = 1 ] && ! have_tools; }

if ! have_wheel || need_tools; then
    started=$SECONDS
    partial="$CACHE/wheels/partial-$$"
    rm -rf "$partial" && mkdir -p "$partial"
    src="$partial/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
    build="$partial/build"
    buildenv="$partial/buildenv"
    log="$CACHE/wheels/build-$$.log"
    : >"$log"
    failed() {
        echo "the llama.cpp build failed ($1); the last lines of its log, $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    }

    # Our own unpacked sdist, build folder and build environment (pip's would be deleted
    # with the wheel built), so that the tools can be built in the same tree.
    echo "Downloading llama-cpp-python $LLAMA_CPP_PYTHON_VERSION's source..." >&2
    .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$partial"
    tar -xzf "$partial/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$partial"
    grep -qF "$FORCED_COMMON" "$src/CMakeLists.txt" || {
        echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION's CMakeLists.txt no longer forces" \
             "LLAMA_BUILD_COMMON as this script expects: update scripts/setup.sh" >&2
        exit 1
    }
    grep -vF "$FORCED_COMMON" "$src/CMakeLists.txt" >"$src/CMakeLists.lmgauge"
    mv "$src/CMakeLists.lmgauge" "$src/CMakeLists.txt"
    .venv/bin/python -m venv "$buildenv"
    # As pip's isolated build would: the system's CMake (3.21 or newer) and Ninja if there
    # are, else those from PyPI.
    requires=("scikit-build-core>=0.10")
    cmake_version=$(cmake --version 2>/dev/null | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p')
    if [ -z "$cmake_version" ] \
            || [ "$(printf '%s\n' 3.21 "$cmake_version" | sort -V | head -n 1)" != 3.21 ]; then
        requires+=(cmake)
    fi
    command -v ninja >/dev/null || requires+=(ninja)
    "$buildenv/bin/python" -m pip install --quiet "${requires[@]}"
    export PATH="$buildenv/bin:$PATH"  # for this build only: the folder goes below
    progress() { .venv/bin/python scripts/build_progress.py "$1" "$log"; }

    if ! have_wheel; then
        echo "Compiling llama.cpp for this CPU (ggml and libllama, once per machine; about" \
             "2 minutes on 2 cores)..." >&2
        CMAKE_ARGS="${CMAKE_ARGS:-} ${LLAMA_CMAKE_FLAGS[*]} ${WHEEL_CMAKE_FLAGS[*]}" \
            "$buildenv/bin/python" -m pip wheel -v --no-deps --no-build-isolation \
            --no-cache-dir --config-settings=build-dir="$build" "$src" -w "$partial" 2>&1 \
            | progress "compiling llama.cpp (the engine)" || failed "the wheel"
        mkdir -p "$cached"
        mv "$partial"/llama_cpp_python-*.whl "$cached/"  # one rename: the cache's mark
        echo "Compiled the engine in $((SECONDS - started)) s: $cached" >&2
    fi
    if need_tools; then
        tools_started=$SECONDS
        echo "Compiling llama.cpp's llama-server, llama-bench and llama-quantize..." >&2
        generator=()
        [ -f "$build/CMakeCache.txt" ] || generator=(-G Ninja -DCMAKE_BUILD_TYPE=Release)
        cmake -S "$src" -B "$build" -Wno-dev "${generator[@]}" "${LLAMA_CMAKE_FLAGS[@]}" \
            "${LLAMA_TOOLS_CMAKE_FLAGS[@]}" >>"$log" 2>&1 || failed "configuring the tools"
        cmake --build "$build" --target "${LLAMA_TOOLS[@]}" --parallel "$JOBS" 2>&1 \
            | progress "compiling llama.cpp's tools" || failed "the tools"
        mkdir "$partial/tools"
        for tool in "${LLAMA_TOOLS[@]}"; do cp "$build/bin/$tool" "$partial/tools/"; done
        find "$build/bin" -maxdepth 1 \( -name 'lib*.so*' -o -name 'lib*.dylib' \) \
            -exec cp -P {} "$partial/tools/" \;
        if [ "$(uname -s)" != Darwin ]; then
            # CMake leaves an empty entry in some RUNPATHs ("$ORIGIN:"), which the loader
            # reads as the working directory: make every one exactly $ORIGIN.
            cat >"$partial/rpath.cmake" <<'CMAKE'
file(GLOB files LIST_DIRECTORIES false "${DIR}/*")
foreach(f IN LISTS files)
    if(NOT IS_SYMLINK "${f}")
        file(RPATH_SET FILE "${f}" NEW_RPATH "$ORIGIN")
    endif()
endforeach()
CMAKE
            cmake -DDIR="$partial/tools" -P "$partial/rpath.cmake" >/dev/null
        fi
        rm -rf "$build"
        # With the build tree gone, the tools must find their libraries beside themselves.
        "$partial/tools/llama-server" --version >/dev/null 2>&1 || {
            echo "the llama-server just built does not run:" >&2
            "$partial/tools/llama-server" --version >&2 || true
            exit 1
        }
        rm -rf "$tools_dir" && mv "$partial/tools" "$tools_dir"
        echo "Compiled the tools in $((SECONDS - tools_started)) s: $tools_dir" >&2
    fi
    rm -rf "$partial" "$log"
fi
.venv/bin/python -m pip install --quiet "$cached"/llama_cpp_python-*.whl
.venv/bin/python -m pip install --quiet -e ".[dev,llamacpp,mlx]"

if [ "$WITH_TOOLS" = 1 ]; then
    # The tools, with their shared libraries, in .venv/lib/llama.cpp/ (a copy: the venv
    # keeps working if the cache is cleared), and on .venv/bin through links.
    rm -rf .venv/lib/llama.cpp && cp -RP "$tools_dir" .venv/lib/llama.cpp
    for tool in "${LLAMA_TOOLS[@]}"; do ln -sfn "../lib/llama.cpp/$tool" ".venv/bin/$tool"; done
    .venv/bin/llama-server --version >/dev/null 2>&1 \
        || { echo ".venv/bin/llama-server does not run" >&2; exit 1; }
    echo "Set up .venv (the llama.cpp engine: $cached; its tools: $tools_dir)" >&2
else
    echo "Set up .venv (the llama.cpp engine: $cached). llama.cpp's own tools are not" \
         "built; their tests skip: scripts/setup.sh --with-llama-tools builds them" >&2
fi
