#!/usr/bin/env bash
# Expert parallelism without mpirun: 3 ranks of `herd generate --comm ucx`,
# each a separate process given only HERD_RANK, HERD_WORLD_SIZE,
# HERD_LEADER_ADDRESS and HERD_LEADER_PORT, in three network namespaces joined
# by veths (netns_mpirun.sh --launch env), and again on loopback
# (tests/support/ucx_ranks.sh). Both must give byte-identical logits and
# tokens to the single-process run and to mpirun -np 3.
#
#   expert_parallel_ucx_env_test.sh HERD MODEL [MPIRUN]
#
# Exit code: 0 pass, 1 fail, 77 skipped (not root / no iproute2).
set -euo pipefail
herd=$1 model=$2 mpirun=${3:-mpirun}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/herd-ep-ucx-XXXXXX)
trap 'rm -rf "$work"' EXIT
ids=1,17,42,0,511,100,256,7,300,42,42,99,5,400,128,64
generate=(generate --model "$model" --prompt-ids "$ids" --max-new-tokens 16)

"$herd" "${generate[@]}" --dump-logits "$work/single.f32" > "$work/single.out" 2> /dev/null

OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  "$mpirun" -np 3 --oversubscribe --mca btl self,vader,tcp --mca btl_tcp_if_include lo \
  --mca oob_tcp_if_include lo --mca mpi_yield_when_idle 1 \
  "$herd" "${generate[@]}" --dump-logits "$work/mpi.f32" > "$work/mpi.out" 2> "$work/mpi.err" || {
    echo "FAIL: mpirun -np 3 failed"; cat "$work/mpi.err"; exit 1; }

status=0
"$here/../support/ucx_ranks.sh" --np 3 --timeout 300 -- \
  "$herd" "${generate[@]}" --comm ucx --dump-logits "$work/lo.f32" \
  > "$work/lo.out" 2> "$work/lo.err" || status=$?
if [ "$status" -ne 0 ]; then
  echo "FAIL: 3 ucx ranks on loopback exited $status"; cat "$work/lo.err"; exit 1
fi

status=0
"$here/netns_mpirun.sh" --launch env --np 3 --timeout 300 --min-rx-bytes 10000 -- \
  "$herd" "${generate[@]}" --comm ucx --dump-logits "$work/ns.f32" \
  > "$work/ns.out" 2> "$work/ns.err" || status=$?
if [ "$status" -eq 77 ]; then echo "skipped: $(tail -1 "$work/ns.err")"; exit 77; fi
if [ "$status" -ne 0 ]; then
  echo "FAIL: 3 ucx ranks in 3 namespaces exited $status"; cat "$work/ns.err"; exit 1
fi

for run in mpi lo ns; do
  if ! cmp -s "$work/single.out" "$work/$run.out"; then
    echo "FAIL: tokens of the $run run differ"; cat "$work/single.out" "$work/$run.out"; exit 1
  fi
  if ! cmp -s "$work/single.f32" "$work/$run.f32"; then
    echo "FAIL: logits of the $run run differ from the single process"; exit 1
  fi
done
grep 'ec0 received' "$work/ns.err"
echo "PASS: ucx ranks from env (loopback, and 3 namespaces over veths), mpirun -np 3 and one" \
  "process: tokens and logits identical ($(cat "$work/single.out"))"
