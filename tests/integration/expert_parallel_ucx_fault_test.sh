#!/usr/bin/env bash
# A rank of an expert-parallel `herd generate --comm ucx` (3 processes
# started from the environment only, tests/support/ucx_ranks.sh, no mpirun)
# stopped (SIGSTOP) or killed (SIGKILL) mid-run: the other ranks must fail
# within the comm deadline with an error that names the rank, and no process
# may be left behind. (The mpirun variant is expert_parallel_fault_test.sh.)
#
#   expert_parallel_ucx_fault_test.sh HERD STOP|KILL PORT
set -uo pipefail
herd=$1 signal=$2 port=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/herd-ucx-fault-XXXXXX)
# The herd processes of this run (not the launcher or timeout(1) around them).
herd_pids() {
  local pid
  for pid in $(pgrep -f "$work/model.gguf" 2> /dev/null); do
    [ "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null | cut -d' ' -f1)" = "$herd" ] && echo "$pid"
  done
}
cleanup() {
  for pid in $(pgrep -f "$work/model.gguf" 2> /dev/null); do kill -CONT "$pid" 2> /dev/null; kill -KILL "$pid" 2> /dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
export HERD_COMM_TIMEOUT_MS=3000

# Big enough that 400 tokens take several seconds on 3 ranks.
"$herd" synth --layers 8 --hidden 1024 --heads 16 --kv-heads 4 --experts 8 --top-k 2 --ffn 2816 \
  --vocab 32000 --dtype q4_0 --seed 1 --out "$work/model.gguf" > /dev/null || exit 1

"$here/../support/ucx_ranks.sh" --np 3 --port "$port" --timeout 120 -- \
  "$herd" generate --comm ucx --model "$work/model.gguf" --prompt-ids 1,2,3,4 \
  --max-new-tokens 400 > "$work/out" 2> "$work/err" &
job=$!

# Wait until every rank is past start-up, then hit rank 2 while the ranks
# exchange tokens.
for _ in $(seq 600); do
  [ "$(grep -c 'loaded' "$work/err")" -ge 3 ] && break
  sleep 0.1
done
sleep 0.5
victim=""
for pid in $(herd_pids); do
  if grep -qxz 'HERD_RANK=2' "/proc/$pid/environ" 2> /dev/null; then victim=$pid; fi
done
if [ -z "$victim" ]; then echo "FAIL: rank 2 not found (finished too early?)"; cat "$work/err"; exit 1; fi
kill -"$signal" "$victim"
start=$(date +%s)

# The survivors must end well within a minute: 3 s deadline + teardown. The
# stopped rank itself never ends on its own: the launcher's check is only for
# the others, which are the ranks still running the model.
deadline=$((start + 30))
while [ "$(date +%s)" -lt "$deadline" ]; do
  survivors=0
  for pid in $(herd_pids); do [ "$pid" != "$victim" ] && survivors=$((survivors + 1)); done
  [ "$survivors" -eq 0 ] && break
  sleep 0.1
done
elapsed=$(( $(date +%s) - start ))
for pid in $(herd_pids); do
  if [ "$pid" != "$victim" ]; then
    echo "FAIL: a surviving rank (pid $pid) still runs ${elapsed} s after SIG$signal of rank 2"
    cat "$work/err"; exit 1
  fi
done
kill -CONT "$victim" 2> /dev/null; kill -KILL "$victim" 2> /dev/null
wait "$job"; status=$?
if [ "$status" -eq 0 ]; then echo "FAIL: the ranks exited 0 after losing rank 2"; exit 1; fi
# The error, not the start-up log. A survivor may also list the other
# survivor when that one was itself stuck waiting for rank 2 one collective
# earlier ("no data from rank(s) 0, 2"); after a SIGKILL, UCX may report the
# closed endpoint on a send first ("ucp_tag_send_nbx with rank 2: Endpoint
# timeout", seen once under a parallel ctest).
names_rank2='rank\(s\) ([0-9]+, )*2\b|rank 2 aborted|with rank 2\b'
if ! grep -v '^\[herd I' "$work/err" | grep -E "$names_rank2" > /dev/null; then
  echo "FAIL: no error names rank 2"; cat "$work/err"; exit 1
fi
if pgrep -f "$work/model.gguf" > /dev/null; then echo "FAIL: processes left behind"; exit 1; fi
echo "PASS: SIG$signal of rank 2 ended the other ranks in ${elapsed} s (exit $status):"
grep -v '^\[herd I' "$work/err" | grep -m2 -E "$names_rank2"
