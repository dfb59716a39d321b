#!/usr/bin/env bash
# The serving benchmark of docs/performance.md: `herd serve` on the mid-size
# synthetic model (Q4_0, with llama.cpp's 32000-token llama vocabulary so that
# any OpenAI-style server can stream its text), loaded by `herd bench serve`
# at several concurrencies; in one process, under mpirun -np 2 (two
# expert-parallel ranks), and, when LLAMA_SERVER points at a llama-server
# binary you built yourself, llama.cpp's server on the very same GGUF file
# with the same load. Prints one line per concurrency: throughput and TTFT /
# ITL / E2E percentiles.
#
#   scripts/bench-serve.sh                                    # herd only
#   LLAMA_SERVER=/path/to/llama-server scripts/bench-serve.sh # and llama.cpp
#
# Both servers keep an F16 KV cache (llama-server's default) and use THREADS
# cores; llama-server gets one slot per client (-np C) with PROMPT + GEN + 16
# tokens of context each, a fresh server per concurrency.
#
# Variables: CONCURRENCY (default "1 4 16 64"), REQUESTS_PER_CLIENT (4, at
# least 16 requests per row), PROMPT (128), PREFIX (0: tokens of one shared
# prefix before every prompt, as a system prompt), GEN (64), THREADS (2: cores
# per process, split between the ranks under mpirun), MODES ("single mpi",
# plus "llama" with LLAMA_SERVER; "single-nocache" is one process with
# --no-prefix-caching), KV_CACHE_TYPE (f16), JSON_MODE (0; 1: every request
# asks for JSON output, response_format json_object), JSON_SCHEMA (a JSON
# schema file every request's output must follow, response_format
# json_schema; e.g. configs/structured-output-example.json), MODELS_DIR
# (/tmp/herd-bench-models), BUILD_DIR (build).
#
#   PREFIX=1024 PROMPT=64 GEN=32 MODES="single single-nocache" scripts/bench-serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
CONCURRENCY=${CONCURRENCY:-1 4 16 64}
REQUESTS_PER_CLIENT=${REQUESTS_PER_CLIENT:-4}
PROMPT=${PROMPT:-128}
PREFIX=${PREFIX:-0}
JSON_MODE=${JSON_MODE:-0}
JSON_SCHEMA=${JSON_SCHEMA:-}
GEN=${GEN:-64}
THREADS=${THREADS:-2}
KV_CACHE_TYPE=${KV_CACHE_TYPE:-f16}
default_modes="single mpi"
if [ -n "${LLAMA_SERVER:-}" ]; then default_modes="single mpi llama"; fi
MODES=${MODES:-$default_modes}
MODELS_DIR=${MODELS_DIR:-/tmp/herd-bench-models}
HERD="$BUILD_DIR/tools/herd"
model="$MODELS_DIR/mid-q4_0-llama-vocab.gguf"
mkdir -p "$MODELS_DIR"
if [ ! -f "$model" ]; then
  "$HERD" synth --layers 8 --hidden 1024 --heads 16 --kv-heads 4 --experts 8 --top-k 2 \
    --ffn 2816 --dtype q4_0 --seed 1 \
    --tokenizer-from tests/data/tokenizers/ggml-vocab-llama-spm.gguf --out "$model" > /dev/null
fi

workdir=$(mktemp -d)
server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2> /dev/null; then
    pkill -TERM -P "$server_pid" 2> /dev/null || true
    kill -TERM "$server_pid" 2> /dev/null || true
    wait "$server_pid" 2> /dev/null || true
  fi
  server_pid=""
}
cleanup() {
  stop_server
  rm -rf "$workdir"
}
trap cleanup EXIT

# Starts the server of mode $1 for concurrency $2 and sets `url`.
start_server() {
  local mode=$1 clients=$2 port
  rm -f "$workdir/port"
  local serve=("$HERD" serve --model "$model" --host 127.0.0.1 --port 0
    --port-file "$workdir/port" --kv-cache-type "$KV_CACHE_TYPE")
  case "$mode" in
    single)
      "${serve[@]}" --threads "$THREADS" > "$workdir/server.log" 2>&1 &
      ;;
    single-nocache)
      "${serve[@]}" --threads "$THREADS" --no-prefix-caching > "$workdir/server.log" 2>&1 &
      ;;
    mpi)
      # Two ranks on the machine's cores: each gets THREADS / 2.
      mpirun -np 2 --allow-run-as-root --oversubscribe --mca btl self,vader,tcp \
        --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
        "${serve[@]}" --threads $((THREADS > 1 ? THREADS / 2 : 1)) > "$workdir/server.log" 2>&1 &
      ;;
    llama)
      # llama-server takes no port 0: ask the kernel for a free one.
      python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
        > "$workdir/port"
      "$LLAMA_SERVER" -m "$model" -t "$THREADS" -tb "$THREADS" -np "$clients" \
        -c $((clients * (PREFIX + PROMPT + GEN + 16))) -ctk "$KV_CACHE_TYPE" -ctv "$KV_CACHE_TYPE" \
        --host 127.0.0.1 --port "$(cat "$workdir/port")" > "$workdir/server.log" 2>&1 &
      ;;
  esac
  server_pid=$!
  for _ in $(seq 300); do [ -s "$workdir/port" ] && break; sleep 0.2; done
  [ -s "$workdir/port" ] || { cat "$workdir/server.log"; exit 1; }
  port=$(cat "$workdir/port")
  url="http://127.0.0.1:$port"
  # Ready when /health answers 200 (herd's once it serves, llama.cpp's once loaded).
  for _ in $(seq 300); do
    curl -sf "$url/health" > /dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2> /dev/null || break
    sleep 0.2
  done
  cat "$workdir/server.log"
  exit 1
}

describe() {
  case "$1" in
    single) echo "herd serve, one process" ;;
    single-nocache) echo "herd serve, one process, --no-prefix-caching" ;;
    mpi) echo "herd serve, mpirun -np 2" ;;
    llama) echo "llama-server $("$LLAMA_SERVER" --version 2>&1 | sed -n 's/^version: //p')" ;;
  esac
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
echo "model: $model; prompt $PREFIX shared + $PROMPT tokens, $GEN generated, temperature 0;" \
  "KV cache $KV_CACHE_TYPE$([ "$JSON_MODE" = 1 ] && echo "; JSON mode")$([ -n "$JSON_SCHEMA" ] && echo "; JSON schema $JSON_SCHEMA")"
for mode in $MODES; do
  echo
  echo "== $mode ($(describe "$mode"), $THREADS cores)"
  printf '%-5s %9s %9s %10s %9s %9s %9s %9s %9s %9s %9s %9s\n' conc requests "req/s" "out tok/s" \
    "ttft p50" "ttft p90" "ttft p99" "itl p50" "itl p90" "itl p99" "e2e p50" "cached"
  for c in $CONCURRENCY; do
    # A fresh server per row for llama-server (its slots) and with a shared
    # prefix (every row starts with a cold prefix cache).
    if [ -z "$server_pid" ] || [ "$mode" = llama ] || [ "$PREFIX" -gt 0 ]; then
      stop_server
      start_server "$mode" "$c"
    fi
    requests=$((c * REQUESTS_PER_CLIENT < 16 ? 16 : c * REQUESTS_PER_CLIENT))
    json_mode=()
    if [ "$JSON_MODE" = 1 ]; then json_mode=(--json-mode); fi
    if [ -n "$JSON_SCHEMA" ]; then json_mode=(--json-schema "$JSON_SCHEMA"); fi
    "$HERD" bench serve --url "$url" --concurrency "$c" --requests "$requests" \
      --prompt-len "$PROMPT" --prefix-len "$PREFIX" --gen-len "$GEN" --vocab 32000 \
      "${json_mode[@]}" --json > "$workdir/result.json"
    python3 - "$workdir/result.json" "$c" << 'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def ms(section, q):
    v = r.get(section, {}).get(f"{q}_ms")
    return f"{v:9.1f}" if v is not None else f"{'-':>9}"
errors = "; ".join(f"{e['count']} x {e['message']}" for e in r["errors"])
failed = f" ({r['failed']} failed: {errors})" if r["failed"] else ""
print(f"{sys.argv[2]:<5} {r['completed']:>9} {r['request_throughput']:9.2f} "
      f"{r['output_throughput']:10.1f} {ms('ttft', 'p50')} {ms('ttft', 'p90')} "
      f"{ms('ttft', 'p99')} {ms('itl', 'p50')} {ms('itl', 'p90')} {ms('itl', 'p99')} "
      f"{ms('e2e', 'p50')} {r['total_cached_tokens']:9d}{failed}")
PY
  done
  stop_server
done
