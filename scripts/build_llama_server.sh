#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` (continuous batching: several requests at once) from the llama.cpp source
# that the pinned llama-cpp-python sdist vendors, so that the server and the Python bindings are the same llama.cpp,
# and put it at .venv/bin/llama-server. The build (6-8 min on 2 cores) is kept in the user's cache, keyed on the
# version, the machine and its CPU flags, so a second install on the same machine only copies it.
#
# Usage: scripts/build_llama_server.sh [VENV]   (default .venv; a relative VENV is read from the project root)
set -euo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."
venv=${1:-.venv}
version=$(grep -E '^llama[-_]cpp[-_]python==' requirements.lock | cut -d= -f3 || true)
[[ -n $version ]] || { echo "build_llama_server: no llama_cpp_python== pin in requirements.lock" >&2; exit 1; }
hash() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi | cut -c1-12; }
# the cache is keyed on the version, this script (its cmake options), the machine and its CPU's features
cpu=$( { uname -m; grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || sysctl -n machdep.cpu.features \
         2>/dev/null || true; cat "$self"; } | hash)
cache=${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/delib/llama-server/$version-$cpu
if ! mkdir -p "$cache" 2>/dev/null || [[ ! -w $cache ]]; then
  cache=$venv/.llama-server-build/$version-$cpu  # no writable user cache: keep the build beside the environment
  mkdir -p "$cache"
fi
target=$venv/bin/llama-server

if [[ ! -x $cache/llama-server ]] || ! "$cache/llama-server" --version >/dev/null 2>&1; then
  echo "building llama-server from llama-cpp-python $version's vendored llama.cpp (6-8 min on 2 cores)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$venv/bin/python" -m pip download --disable-pip-version-check --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$version" -d "$work"
  tar -xzf "$work"/llama[-_]cpp[-_]python-*.tar.gz -C "$work"
  src=$(echo "$work"/llama[-_]cpp[-_]python-*/vendor/llama.cpp)
  # No web UI (and none fetched from the net), no HTTPS, no curl: a loopback API server only.
  # Built for this CPU (-march=native), but without AMX: a CPU may list AMX while its machine (a VM) does not let
  # a process use the tiles, and the AMX kernels then die with SIGILL at the first matrix product (seen here: a
  # Sapphire Rapids VM). For a small quantised model AMX buys nothing measurable.
  flags=()
  if [[ $(uname -m) == x86_64 ]]; then
    flags=(-DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
           -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
  fi
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF "${flags[@]}" > "$work/cmake.log" 2>&1 \
    || { tail -30 "$work/cmake.log" >&2; exit 1; }
  jobs=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
  cmake --build "$work/build" --target llama-server -j "$jobs" > "$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; exit 1; }
  tmp=$(mktemp "$cache/llama-server.XXXXXX")  # two installs at once each write their own, then one wins
  cp "$work/build/bin/llama-server" "$tmp"
  chmod +x "$tmp"
  cp "$src/LICENSE" "$cache/LICENSE"
  mv "$tmp" "$cache/llama-server"
fi
tmp=$(mktemp "$venv/bin/.llama-server.XXXXXX")
cp "$cache/llama-server" "$tmp"
chmod +x "$tmp"
mv "$tmp" "$target"
"$target" --version >/dev/null 2>&1 || { echo "build_llama_server: $target does not run" >&2; exit 1; }
# `--version` runs no kernel: decode two tokens with the embedded model, so that a binary this machine cannot run
# (an instruction it lacks) is found now, not in the middle of a stage; such a binary is removed, and the suite
# serves the embedded model with llama-cpp-python's server instead (one request at a time, with a warning).
if ! "$venv/bin/python" "$(dirname "$self")/check_llama_server.py" "$target"; then
  rm -f "$target" "$cache/llama-server"
  echo "build_llama_server: $target cannot decode on this machine; removed (llama-cpp-python's server is used)" >&2
  exit 0
fi
echo "llama-server ready: $target ($("$target" --version 2>&1 | grep -m1 -i version || true))"
