#!/usr/bin/env bash
# A rank killed (SIGKILL) or stopped (SIGSTOP) in the middle of a run, with
# real mpirun processes. Checks that nothing hangs, that every survivor
# reports the lost rank by name within its deadline, and that no process of
# the job is left afterwards.
#
#   mpi_fault_test.sh MPIEXEC COMM_MPI_FAULT_BINARY MODE
#
# MODE:
#   kill, stop        mpirun --enable-recovery, so Open MPI lets the survivors
#                     run on and the comm layer's deadlines must catch the loss;
#                     survivors then MPI_Abort the job.
#   kill-norecovery   mpirun's default: Open MPI itself tears the job down when
#                     a rank dies, and mpirun names the rank.
set -uo pipefail

MPIEXEC=$1
BINARY=$2
MODE=$3
NP=3
VICTIM=$((NP - 1))
DEADLINE_MS=3000

dir=$(mktemp -d "${TMPDIR:-/tmp}/herd-mpi-fault.XXXXXX")
cleanup() {
  # Whatever happened, no rank of this job may survive the test.
  for f in "$dir"/rank*.pid; do
    [ -f "$f" ] || continue
    kill -9 "$(cat "$f")" 2>/dev/null
  done
  rm -rf "$dir"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  echo "---- mpirun output ----"
  cat "$dir/out" 2>/dev/null
  for f in "$dir"/rank*.result; do [ -f "$f" ] && echo "$f: $(cat "$f")"; done
  exit 1
}

# shellcheck disable=SC2054  # the commas separate MCA values, not array items
flags=(--oversubscribe --allow-run-as-root --mca btl self,vader,tcp --mca btl_tcp_if_include lo
       --mca oob_tcp_if_include lo --mca mpi_yield_when_idle 1)
signal=${MODE%-norecovery}
[ "$MODE" = "kill-norecovery" ] || flags+=(--enable-recovery)

start=$(date +%s%N)
timeout -s KILL 120 "$MPIEXEC" -n "$NP" "${flags[@]}" "$BINARY" --mode "$signal" \
  --result-dir "$dir" --deadline-ms "$DEADLINE_MS" --grace-ms 2000 >"$dir/out" 2>&1
rc=$?
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
echo "mode $MODE: mpirun exited with $rc after $elapsed_ms ms"

# (mpirun's own exit code may be 137 too: it reports a rank's SIGKILL.)
[ "$elapsed_ms" -ge 119000 ] && fail "mpirun hung (killed by the test's 120 s timeout)"
for r in $(seq 0 $((NP - 1))); do
  [ -f "$dir/rank$r.pid" ] || fail "rank $r never started"
done

if [ "$MODE" = "kill-norecovery" ]; then
  [ "$rc" -ne 0 ] || fail "mpirun exited 0 although rank $VICTIM was killed"
  grep -q "rank $VICTIM with PID .* exited on signal 9" "$dir/out" ||
    fail "mpirun did not name rank $VICTIM"
else
  for r in $(seq 0 $((VICTIM - 1))); do
    result="$dir/rank$r.result"
    [ -f "$result" ] || fail "survivor rank $r reported nothing"
    line=$(cat "$result")
    echo "rank $r: $line"
    case "$line" in
      "detected DEADLINE_EXCEEDED after "*) ;;
      *) fail "rank $r did not report a deadline: $line" ;;
    esac
    echo "$line" | grep -Eq "no data from rank\(s\) $VICTIM(;|$)" ||
      fail "rank $r did not name rank $VICTIM (and only it): $line"
    waited=$(echo "$line" | sed -E 's/^detected [A-Z_]+ after ([0-9]+) ms.*/\1/')
    if [ "$waited" -lt $((DEADLINE_MS - 100)) ] || [ "$waited" -gt $((DEADLINE_MS + 5000)) ]; then
      fail "rank $r waited $waited ms for a $DEADLINE_MS ms deadline"
    fi
  done
  grep -q "MPI_Abort" "$dir/out" || fail "no survivor aborted the job"
fi

# Every process of the job is gone (a zombie waiting for its parent counts as gone).
for _ in $(seq 1 50); do
  alive=""
  for f in "$dir"/rank*.pid; do
    pid=$(cat "$f")
    state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    [ -n "$state" ] && [ "$state" != "Z" ] && alive="$alive $pid"
  done
  [ -z "$alive" ] && break
  sleep 0.2
done
[ -z "$alive" ] || fail "processes left after the job ended:$alive"
echo "PASS: $MODE"
