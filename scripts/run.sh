#!/usr/bin/env bash
# Sets up Herd and runs its main job on this machine: `herd serve`, the
# OpenAI-compatible server, on http://127.0.0.1:8000. Without MODEL it serves
# a small demo model that `herd serve` creates itself (random weights: its
# token ids carry no meaning). Stop it with Ctrl-C; it drains first.
#
#   scripts/run.sh                          # the demo model on port 8000
#   MODEL=path/to/model.gguf scripts/run.sh --port 9000
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
args=()
if [ -n "${MODEL:-}" ]; then args+=(--model "$MODEL"); fi
echo "run: try  curl -s localhost:8000/v1/completions -d '{\"prompt\": [1, 2, 3], \"max_tokens\": 8}'"
exec "$BUILD_DIR/tools/herd" serve "${args[@]}" "$@"
