#!/usr/bin/env bash
# The serving benchmark of docs/performance.md: `herd serve` on the mid-size
# synthetic model (Q4_0), loaded by `herd bench serve` at several
# concurrencies; in one process, then under mpirun -np 2 (two expert-parallel
# ranks). Prints one line per concurrency: throughput and TTFT / ITL / E2E
# percentiles.
#
#   scripts/bench-serve.sh
#
# Variables: CONCURRENCY (default "1 4 16 64"), REQUESTS_PER_CLIENT (4, at
# least 16 requests per row), PROMPT (128), GEN (64), THREADS (2: cores per
# process, split between the ranks under mpirun), MODES ("single mpi"),
# MODELS_DIR (/tmp/herd-bench-models), BUILD_DIR (build).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
CONCURRENCY=${CONCURRENCY:-1 4 16 64}
REQUESTS_PER_CLIENT=${REQUESTS_PER_CLIENT:-4}
PROMPT=${PROMPT:-128}
GEN=${GEN:-64}
THREADS=${THREADS:-2}
MODES=${MODES:-single mpi}
MODELS_DIR=${MODELS_DIR:-/tmp/herd-bench-models}
HERD="$BUILD_DIR/tools/herd"
model="$MODELS_DIR/mid-q4_0.gguf"
mkdir -p "$MODELS_DIR"
if [ ! -f "$model" ]; then
  "$HERD" synth --layers 8 --hidden 1024 --heads 16 --kv-heads 4 --experts 8 --top-k 2 \
    --ffn 2816 --vocab 32000 --dtype q4_0 --seed 1 --out "$model" > /dev/null
fi

workdir=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2> /dev/null; then
    pkill -TERM -P "$server_pid" 2> /dev/null || true
    kill -TERM "$server_pid" 2> /dev/null || true
    wait "$server_pid" 2> /dev/null || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
echo "model: $model; prompt $PROMPT tokens, $GEN generated, temperature 0"
for mode in $MODES; do
  rm -f "$workdir/port"
  serve=("$HERD" serve --model "$model" --host 127.0.0.1 --port 0 --port-file "$workdir/port")
  if [ "$mode" = mpi ]; then
    # Two ranks on the machine's cores: each gets THREADS / 2.
    mpirun -np 2 --allow-run-as-root --oversubscribe --mca btl self,vader,tcp \
      --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
      "${serve[@]}" --threads $((THREADS > 1 ? THREADS / 2 : 1)) > "$workdir/server.log" 2>&1 &
  else
    "${serve[@]}" --threads "$THREADS" > "$workdir/server.log" 2>&1 &
  fi
  server_pid=$!
  for _ in $(seq 300); do [ -s "$workdir/port" ] && break; sleep 0.2; done
  [ -s "$workdir/port" ] || { cat "$workdir/server.log"; exit 1; }
  url="http://127.0.0.1:$(cat "$workdir/port")"
  echo
  echo "== $mode ($([ "$mode" = mpi ] && echo "mpirun -np 2" || echo "one process"), $THREADS cores)"
  printf '%-5s %9s %9s %10s %9s %9s %9s %9s %9s %9s %9s\n' conc requests "req/s" "out tok/s" \
    "ttft p50" "ttft p90" "ttft p99" "itl p50" "itl p90" "itl p99" "e2e p50"
  for c in $CONCURRENCY; do
    requests=$((c * REQUESTS_PER_CLIENT < 16 ? 16 : c * REQUESTS_PER_CLIENT))
    "$HERD" bench serve --url "$url" --concurrency "$c" --requests "$requests" \
      --prompt-len "$PROMPT" --gen-len "$GEN" --vocab 32000 --json > "$workdir/result.json"
    python3 - "$workdir/result.json" "$c" << 'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def ms(section, q):
    v = r.get(section, {}).get(f"{q}_ms")
    return f"{v:9.1f}" if v is not None else f"{'-':>9}"
print(f"{sys.argv[2]:<5} {r['completed']:>9} {r['request_throughput']:9.2f} "
      f"{r['output_throughput']:10.1f} {ms('ttft', 'p50')} {ms('ttft', 'p90')} "
      f"{ms('ttft', 'p99')} {ms('itl', 'p50')} {ms('itl', 'p90')} {ms('itl', 'p99')} "
      f"{ms('e2e', 'p50')}")
PY
  done
  kill -TERM "$server_pid" 2> /dev/null || true
  pkill -TERM -P "$server_pid" 2> /dev/null || true
  wait "$server_pid" 2> /dev/null || true
  server_pid=""
done
