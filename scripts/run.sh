#!/usr/bin/env bash
# Sets up Herd and runs its main job on this machine: greedy generation on the
# tiny Mixtral-style model shipped in tests/data (random weights, llama.cpp's
# reference fixture), printing the generated token ids.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
MODEL=${MODEL:-tests/data/llamacpp-tiny/tiny-q8_0.gguf}
echo "run: $MODEL has random weights; its token ids carry no meaning"
"$BUILD_DIR/tools/herd" inspect --model "$MODEL"
"$BUILD_DIR/tools/herd" generate --model "$MODEL" \
  --prompt-ids 1,17,42,0,511,100,256,7,300,42,42,99,5,400,128,64 --max-new-tokens 16 "$@"
