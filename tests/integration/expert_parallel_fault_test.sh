#!/usr/bin/env bash
# A rank of an expert-parallel `herd generate` stopped (SIGSTOP) or killed
# (SIGKILL) mid-run: the job must end within the comm deadline, with an error
# that names the rank, and leave no process behind.
#
#   expert_parallel_fault_test.sh HERD STOP|KILL [MPIRUN]
set -uo pipefail
herd=$1 signal=$2 mpirun=${3:-mpirun}
work=$(mktemp -d /tmp/herd-ep-fault-XXXXXX)
cleanup() {
  for pid in $(pgrep -f "$work/model.gguf" 2> /dev/null); do kill -CONT "$pid" 2> /dev/null; kill -KILL "$pid" 2> /dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 HERD_COMM_TIMEOUT_MS=3000

# Big enough that 400 tokens take several seconds on 3 ranks.
"$herd" synth --layers 8 --hidden 1024 --heads 16 --kv-heads 4 --experts 8 --top-k 2 --ffn 2816 \
  --vocab 32000 --dtype q4_0 --seed 1 --out "$work/model.gguf" > /dev/null || exit 1

"$mpirun" -np 3 --oversubscribe --mca btl self,vader,tcp --mca btl_tcp_if_include lo \
  --mca oob_tcp_if_include lo --mca mpi_yield_when_idle 1 -x HERD_COMM_TIMEOUT_MS \
  "$herd" generate --model "$work/model.gguf" --prompt-ids 1,2,3,4 --max-new-tokens 400 \
  > "$work/out" 2> "$work/err" &
job=$!

# Wait until every rank is past start-up (MPI_Init has no deadline), then
# hit rank 2 while the ranks exchange tokens.
for _ in $(seq 600); do
  [ "$(grep -c 'loaded' "$work/err")" -ge 3 ] && break
  sleep 0.1
done
sleep 0.5
victim=""
for pid in $(pgrep -f "$work/model.gguf"); do
  if grep -qxz 'OMPI_COMM_WORLD_RANK=2' "/proc/$pid/environ" 2> /dev/null; then victim=$pid; fi
done
if [ -z "$victim" ]; then echo "FAIL: rank 2 not found (finished too early?)"; cat "$work/err"; exit 1; fi
kill -"$signal" "$victim"
start=$(date +%s)

# The job must end well within a minute: 3 s deadline + teardown.
for _ in $(seq 600); do kill -0 "$job" 2> /dev/null || break; sleep 0.1; done
if kill -0 "$job" 2> /dev/null; then
  echo "FAIL: the job still runs $(( $(date +%s) - start )) s after SIG$signal of rank 2"
  kill -KILL "$job"; exit 1
fi
wait "$job"; status=$?
elapsed=$(( $(date +%s) - start ))
if [ "$status" -eq 0 ]; then echo "FAIL: the job exited 0 after losing rank 2"; exit 1; fi
# The error, not the start-up log: the survivors' deadline (SIGSTOP) or
# mpirun's notice of the dead process (SIGKILL). A survivor may also list
# the other survivor when that one was itself stuck waiting for rank 2
# one collective earlier ("no data from rank(s) 0, 2").
names_rank2='rank\(s\) ([0-9]+, )*2\b|rank 2 with PID'
if ! grep -v '^\[herd I' "$work/err" | grep -E "$names_rank2" > /dev/null; then
  echo "FAIL: no error names rank 2"; cat "$work/err"; exit 1
fi
if pgrep -f "$work/model.gguf" > /dev/null; then echo "FAIL: processes left behind"; exit 1; fi
echo "PASS: SIG$signal of rank 2 ended the job in ${elapsed} s (exit $status):"
grep -v '^\[herd I' "$work/err" | grep -m2 -E "$names_rank2"
