#!/usr/bin/env bash
# The compression table of docs/compression.md: the mid-size synthetic model
# with outlier weights (`herd synth --outliers`) in F16, compressed by `herd
# compress` in several ways; for each, bytes, average bits, fidelity against
# the F16 model on held-out tokens (mean KL, top-1 agreement) and decode
# speed against F16 (as `herd bench` measures, inside `herd compress`).
#
#   scripts/bench-compression.sh
#
# Variables: THREADS (default 2), MODELS_DIR (default /tmp/herd-bench-models),
# BUILD_DIR (build), OUTLIERS (1: the --outliers model; 0: the plain one),
# SPEED (1: measure decode speed; 0: skip it).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
THREADS=${THREADS:-2}
MODELS_DIR=${MODELS_DIR:-/tmp/herd-bench-models}
OUTLIERS=${OUTLIERS:-1}
SPEED=${SPEED:-1}
HERD="$BUILD_DIR/tools/herd"
mkdir -p "$MODELS_DIR"
outlier_flag=""
source_model="$MODELS_DIR/mid-f16.gguf"
if [ "$OUTLIERS" = 1 ]; then
  outlier_flag="--outliers"
  source_model="$MODELS_DIR/mid-f16-outliers.gguf"
fi
speed_flag=""
[ "$SPEED" = 1 ] || speed_flag="--no-speed"
if [ ! -f "$source_model" ]; then
  # shellcheck disable=SC2086  # an optional word
  "$HERD" synth --layers 8 --hidden 1024 --heads 16 --kv-heads 4 --experts 8 --top-k 2 \
    --ffn 2816 --vocab 32000 --dtype f16 $outlier_flag --seed 1 --out "$source_model" > /dev/null
fi

# name | herd compress flags (--modules experts,attention for every row)
ROWS=(
  "int8 g128 RTN|--bits 8 --group-size 128"
  "int4 g128 RTN|--bits 4 --group-size 128"
  "int4 g128 GPTQ (64 x 128 calibration ids)|--bits 4 --group-size 128 --method gptq --calib-sequences 64 --calib-length 128"
  "int3 g128 RTN|--bits 3 --group-size 128"
  "int2 g128 RTN|--bits 2 --group-size 128"
  "mixed: experts 2, attention 4, outlier-scored experts 4, 3 bits on average|--bits 2 --group-size 128 --bits-map attn_4,shared_4 --policy outlier --avg-bits 3"
  "expert drop 25% (2 of 8 per layer), F16|--bits-map main_16,attn_16 --drop-experts 2"
  "layer drop 25% (2 of 8 MoE sublayers), F16|--bits-map main_16,attn_16 --drop-layers 2"
  "block drop 25% (2 of 8 blocks), F16|--bits-map main_16,attn_16 --drop-blocks 2"
  "int4 g128 RTN, then expert drop 25% (scored on int4)|--bits 4 --group-size 128 --drop-experts 2"
  "dynamic skipping (auto thresholds), F16|--bits-map main_16,attn_16 --skip-threshold auto"
  "int4 g128 RTN + dynamic skipping (auto thresholds)|--bits 4 --group-size 128 --skip-threshold auto"
)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
echo "source: $source_model"
echo
echo "| method | bytes | average bits (quantized) | mean KL | top-1 agreement | logits rel. error | expert calls skipped | decode t/s (F16 -> this) | decode speedup |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
echo "| F16 (the source) | $(( $(stat -c %s "$source_model") / 1048576 )) MiB | 16 | 0 | 100% | 0 | | | 1.00x |"
for row in "${ROWS[@]}"; do
  IFS='|' read -r name flags <<< "$row"
  out="$MODELS_DIR/compressed-$OUTLIERS-$(echo "$name" | tr -c 'a-z0-9\n' '-')"
  report="$out.json"
  # shellcheck disable=SC2086  # flags are words
  "$HERD" compress --model "$source_model" --out "$out" --force --threads "$THREADS" \
    --modules experts,attention $flags $speed_flag --report "$report" > /dev/null
  python3 - "$name" "$report" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
f, s = r["fidelity"], r["size"]
sp = r.get("speed")
bits = r['nominal_average_bits']
print(f"| {name} | {s['bytes_after'] / 2**20:.0f} MiB | {bits if bits else 16:.2f} "
      f"({s['average_bits']:.2f} stored, all weights) | {f['mean_kl']:.4f} | "
      f"{100 * f['top1_agreement']:.1f}% | {f['logits_relative_error']:.3f} | "
      + (f"{100 * r['skipping']['skipped_fraction']:.1f}% | " if 'skipping' in r else "| ")
      + (f"{sp['before']['decode_tokens_per_second']:.0f} -> "
         f"{sp['after']['decode_tokens_per_second']:.0f} | {sp['decode_speedup']:.2f}x |"
         if sp else "not measured | |"))
PY
done
