#!/usr/bin/env bash
# The cold compile of the embedded engine's wheel (issue 15): the recipe scripts/setup.sh
# used before (llama-cpp-python's default targets: ggml, libllama, the multimodal libmtmd
# and llama.cpp's common library) against the lean one it uses now (ggml and libllama), one
# after the other, each from a fresh copy of the same sdist with a fresh build folder,
# timed by /usr/bin/time. Nothing else should run meanwhile.
#   scripts/engine_build_cost.sh WORKDIR before after
set -euo pipefail
cd "$(dirname "$0")/.."
work=$1
version=0.3.36
common_flags="-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
forced='set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)'

mkdir -p "$work" && cd "$work"
[ -f "llama_cpp_python-$version.tar.gz" ] || python3 -m pip download --quiet --no-deps \
    --no-binary :all: "llama-cpp-python==$version" -d .
[ -x buildenv/bin/python ] || { python3 -m venv buildenv
    buildenv/bin/python -m pip install --quiet "scikit-build-core>=0.10" cmake ninja; }
export PATH="$work/buildenv/bin:$PATH"

build() {  # name, extra CMake flags, patch the forced common library out (0/1)
    rm -rf "$1" && mkdir "$1" && tar -xzf "llama_cpp_python-$version.tar.gz" -C "$1"
    local src="$1/llama_cpp_python-$version"
    if [ "$3" = 1 ]; then
        grep -vF "$forced" "$src/CMakeLists.txt" >"$src/CMakeLists.new"
        mv "$src/CMakeLists.new" "$src/CMakeLists.txt"
    fi
    CMAKE_ARGS="$common_flags $2" /usr/bin/time -f "$1: %e s wall, %U s user, %S s system" \
        buildenv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation \
        --no-cache-dir --config-settings=build-dir="$1/build" "$src" -w "$1" 2>&1 | tail -n 1
    echo "$1: built $(find "$1" -path '*/build/*' -name 'lib*.so' -printf '%f\n' | sort -u | tr '\n' ' ')"
}
for recipe in "${@:2}"; do
    case "$recipe" in
        before) build before "" 0 ;;
        after) build after "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_COMMON=OFF" 1 ;;
    esac
done
