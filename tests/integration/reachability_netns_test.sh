#!/usr/bin/env bash
# The NCCL pre-flight's reachability probe across three "hosts" (network
# namespaces, see netns_mpirun.sh), MPI over their veths:
#   NCCL_SOCKET_IFNAME=ec0 (the veths): every rank reaches every other;
#   NCCL_SOCKET_IFNAME=lo: each rank listens on its own 127.0.0.1, so its
#   peers' connections are refused, and every rank reports it (where NCCL
#   itself would hang in its bootstrap).
#
#   reachability_netns_test.sh PROBE [MPIRUN]
#
# Exit code: 0 pass, 1 fail, 77 skipped (not root / no iproute2).
set -uo pipefail
probe=$1 mpirun=${2:-mpirun}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/herd-reach-netns-XXXXXX)
trap 'rm -rf "$work"' EXIT

for case in "ec0 reachable" "lo unreachable"; do
  read -r ifname expect <<< "$case"
  status=0
  NCCL_SOCKET_IFNAME=$ifname "$here/netns_mpirun.sh" --np 3 --mpirun "$mpirun" --timeout 120 \
    --env NCCL_SOCKET_IFNAME -- "$probe" "$expect" > "$work/out" 2> "$work/err" || status=$?
  if [ "$status" -eq 77 ]; then echo "skipped: $(tail -1 "$work/err")"; exit 77; fi
  if [ "$status" -ne 0 ]; then
    echo "FAIL: NCCL_SOCKET_IFNAME=$ifname: expected $expect on every rank (exit $status)"
    cat "$work/out" "$work/err"
    exit 1
  fi
  if [ "$(grep -c '^rank ' "$work/out")" -ne 3 ]; then
    echo "FAIL: NCCL_SOCKET_IFNAME=$ifname: not every rank reported"; cat "$work/out"; exit 1
  fi
  echo "NCCL_SOCKET_IFNAME=$ifname: $expect on all 3 ranks; rank 0 said: $(grep '^rank 0' "$work/out")"
done
echo "PASS"
