#!/usr/bin/env bash
# The Herd-format benchmark of docs/performance.md: the mid-size synthetic
# model as GGUF Q4_0/Q8_0 and as Herd checkpoints written by `herd compress`
# (the same Q4_0/Q8_0 values converted exactly, and int4-g128, int8 per
# channel, int3-g128, int2-g64 asymmetric from the F16 model, every matrix
# but the router quantized), prefill-512 and decode-128 with `herd bench`,
# interleaved so that every format sees the same machine load.
#
#   scripts/bench-formats.sh
#
# Variables: THREADS (default 2), PROMPT (512), GEN (128), REPS (3), ROUNDS (2),
# MODELS_DIR (default /tmp/herd-bench-models), BUILD_DIR (build).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-512}
GEN=${GEN:-128}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-2}
MODELS_DIR=${MODELS_DIR:-/tmp/herd-bench-models}
HERD="$BUILD_DIR/tools/herd"
MODULES=experts,attention,embeddings
mkdir -p "$MODELS_DIR"

for dtype in f16 q8_0 q4_0; do
  model="$MODELS_DIR/mid-$dtype.gguf"
  if [ ! -f "$model" ]; then
    "$HERD" synth --layers 8 --hidden 1024 --heads 16 --kv-heads 4 --experts 8 --top-k 2 \
      --ffn 2816 --vocab 32000 --dtype "$dtype" --seed 1 --out "$model" > /dev/null
  fi
done

# name, source, compress flags
CHECKPOINTS=(
  "int4-g32-sym (= Q4_0)|mid-q4_0.gguf|--bits 4 --group-size 32"
  "int8-g32-sym (= Q8_0)|mid-q8_0.gguf|--bits 8 --group-size 32"
  "int4-g128-sym|mid-f16.gguf|--bits 4 --group-size 128"
  "int8-ch-sym|mid-f16.gguf|--bits 8 --group-size 0"
  "int3-g128-sym|mid-f16.gguf|--bits 3 --group-size 128"
  "int2-g64-asym|mid-f16.gguf|--bits 2 --group-size 64 --asym"
)
MODELS=("GGUF Q4_0|$MODELS_DIR/mid-q4_0.gguf" "GGUF Q8_0|$MODELS_DIR/mid-q8_0.gguf")
for entry in "${CHECKPOINTS[@]}"; do
  IFS='|' read -r name source flags <<< "$entry"
  out="$MODELS_DIR/herd-${name%% *}"
  if [ ! -d "$out" ]; then
    # shellcheck disable=SC2086  # flags are words
    "$HERD" compress --model "$MODELS_DIR/$source" --out "$out" $flags --modules "$MODULES" \
      > /dev/null
  fi
  MODELS+=("$name|$out")
done

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
echo "command: herd bench --model M --threads $THREADS --prompt $PROMPT --gen $GEN --repetitions $REPS"
echo
echo "| round | format | bytes | pp$PROMPT t/s | tg$GEN t/s | decode GB/s | % of read BW | resident / (weights + KV) |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$ROUNDS"); do
  for entry in "${MODELS[@]}"; do
    IFS='|' read -r name path <<< "$entry"
    json=$("$HERD" bench --model "$path" --threads "$THREADS" --prompt "$PROMPT" --gen "$GEN" \
      --repetitions "$REPS" --json 2>/dev/null)
    python3 - "$round" "$name" "$(du -sbL "$path" | cut -f1)" "$json" <<'PY'
import json, sys
round_, name, size, text = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
r = json.loads(text)
def tps(test):
    t = r[test]
    return f"{t['tokens_per_second_median']:.1f} ± {t['tokens_per_second_stddev']:.1f}"
d, m = r["decode"], r["memory"]
print(f"| {round_} | {name} | {size / 2**20:.0f} MiB | {tps('prefill')} | {tps('decode')} | "
      f"{d['weight_gbps']:.1f} | {d['percent_of_read_bandwidth']:.1f}% | "
      f"{m['resident_over_weights_plus_kv']:.3f} |")
PY
  done
done
