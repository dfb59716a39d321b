#!/usr/bin/env bash
# On a machine with a CUDA GPU and a build of this repository: the GPU tests
# (ctest label gpu, and the CLI and NCCL pre-flight tests that take the GPU
# path when there is one), then the kernel benchmarks of docs/performance.md (the
# expert GEMM at Mixtral-8x7B shapes in W4A16 group 32 with every other op,
# W8A16, W4A16 group 128, and the mid-size model's shapes).
#
#   scripts/gpu-check.sh                 # tests, then benchmarks
#   SKIP_TESTS=1 scripts/gpu-check.sh    # benchmarks only
#
# Variables: BUILD_DIR (build), ITERATIONS (30), OUT (a folder for the logs;
# default: print only).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
ITERATIONS=${ITERATIONS:-30}
HERD="$BUILD_DIR/tools/herd"
log() { if [ -n "${OUT:-}" ]; then tee -a "$OUT/$1"; else cat; fi; }
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; fi

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | log gpu.txt
fi
if [ -z "${SKIP_TESTS:-}" ]; then
  ctest --test-dir "$BUILD_DIR" -L gpu --output-on-failure 2>&1 | log tests.txt
  # Tests outside the label that take the GPU path when there is one.
  ctest --test-dir "$BUILD_DIR" -R 'HerdCliTest.DeviceCuda|NcclPreflightTest|RankGroupTest.Nccl' \
    --output-on-failure 2>&1 | log tests.txt
fi
bench=("$HERD" bench kernels --iterations "$ITERATIONS" --warmup 3)
echo "== ${bench[*]}" | log bench.txt
"${bench[@]}" 2>&1 | log bench.txt
for variant in "--bits 8" "--group-size 128" "--hidden 1024 --ffn 2816"; do
  # shellcheck disable=SC2086 # the variant is a list of flags
  echo "== ${bench[*]} --gemm-only $variant" | log bench.txt
  # shellcheck disable=SC2086
  "${bench[@]}" --gemm-only $variant 2>&1 | log bench.txt
done
