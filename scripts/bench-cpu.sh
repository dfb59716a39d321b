#!/usr/bin/env bash
# The CPU benchmark of docs/performance.md: the mid-size synthetic model in
# Q4_0, Q8_0, F16 and BF16, prefill-512 and decode-128 with `herd bench`, and, when
# LLAMA_BENCH points at a llama-bench binary you built yourself, llama.cpp on
# the very same GGUF files in the same run (interleaved, so both see the same
# machine load).
#
#   scripts/bench-cpu.sh                                  # herd only
#   LLAMA_BENCH=/path/to/llama-bench scripts/bench-cpu.sh # side by side
#
# Variables: THREADS (default 2), PROMPT (512), GEN (128), REPS (5),
# FORMATS ("q4_0 q8_0 f16 bf16"), MODELS_DIR (default /tmp/herd-bench-models),
# BUILD_DIR (build).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-512}
GEN=${GEN:-128}
REPS=${REPS:-5}
FORMATS=${FORMATS:-q4_0 q8_0 f16 bf16}
MODELS_DIR=${MODELS_DIR:-/tmp/herd-bench-models}
HERD="$BUILD_DIR/tools/herd"
mkdir -p "$MODELS_DIR"

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
for dtype in $FORMATS; do
  model="$MODELS_DIR/mid-$dtype.gguf"
  if [ ! -f "$model" ]; then
    "$HERD" synth --layers 8 --hidden 1024 --heads 16 --kv-heads 4 --experts 8 --top-k 2 \
      --ffn 2816 --vocab 32000 --dtype "$dtype" --seed 1 --out "$model" > /dev/null
  fi
  echo
  echo "== $dtype: herd bench --model $model --threads $THREADS --prompt $PROMPT --gen $GEN --repetitions $REPS"
  "$HERD" bench --model "$model" --threads "$THREADS" --prompt "$PROMPT" --gen "$GEN" \
    --repetitions "$REPS"
  if [ -n "${LLAMA_BENCH:-}" ]; then
    echo "== $dtype: llama-bench -m $model -t $THREADS -p $PROMPT -n $GEN -r $REPS"
    "$LLAMA_BENCH" -m "$model" -t "$THREADS" -p "$PROMPT" -n "$GEN" -r "$REPS" 2>/dev/null |
      grep -E '^\|'
  fi
done
