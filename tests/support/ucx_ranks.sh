#!/usr/bin/env bash
# Starts N ranks of a command as separate processes on this machine with only
# the environment of the ucx backend's contract (comm/ucx/ucx_env.h):
# HERD_RANK, HERD_WORLD_SIZE, HERD_LEADER_ADDRESS and HERD_LEADER_PORT. No
# mpirun, no ssh: this is what a Kubernetes manifest does, one pod per rank.
#
#   ucx_ranks.sh [--np N] [--port P] [--address A] [--timeout S] -- COMMAND [ARGS...]
#
#   --np N        ranks (default 2)
#   --port P      HERD_LEADER_PORT (default: 20000 + this script's PID mod 20000,
#                 so that parallel runs rarely meet; pass one to be sure)
#   --address A   HERD_LEADER_ADDRESS (default 127.0.0.1)
#   --timeout S   kill every rank after S seconds (default 600)
#
# Rank 0's stdout is this script's stdout; the other ranks' stdout and every
# rank's stderr go to stderr. Every rank is started at once and all are
# waited for; none outlives the script (trap).
# Exit code: 0 when every rank exits 0, else the first nonzero code in rank
# order; 2 for bad usage.
set -uo pipefail

np=2
port=$((20000 + $$ % 20000))
address=127.0.0.1
timeout_s=600
while [ $# -gt 0 ]; do
  case "$1" in
    --np) np=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --address) address=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "ucx_ranks: unknown option '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ $# -eq 0 ]; then echo "ucx_ranks: no command after --" >&2; exit 2; fi

pids=()
# shellcheck disable=SC2317  # called by the trap below
cleanup() {
  local pid
  # timeout(1) passes TERM on to its rank.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for rank in $(seq 0 $((np - 1))); do
  if [ "$rank" -eq 0 ]; then
    HERD_RANK=$rank HERD_WORLD_SIZE=$np HERD_LEADER_ADDRESS=$address HERD_LEADER_PORT=$port \
      timeout -s KILL "$timeout_s" "$@" &
  else
    HERD_RANK=$rank HERD_WORLD_SIZE=$np HERD_LEADER_ADDRESS=$address HERD_LEADER_PORT=$port \
      timeout -s KILL "$timeout_s" "$@" >&2 &
  fi
  pids+=($!)
done

rc=0
for rank in $(seq 0 $((np - 1))); do
  wait "${pids[$rank]}"
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "ucx_ranks: rank $rank exited $status" >&2
    [ "$rc" -eq 0 ] && rc=$status
  fi
done
exit "$rc"
