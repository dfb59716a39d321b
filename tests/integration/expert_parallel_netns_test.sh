#!/usr/bin/env bash
# Expert parallelism across three "hosts" (network namespaces, see
# netns_mpirun.sh): `herd generate` on 3 ranks over TCP (or UCX) gives
# byte-identical logits and tokens to the single-process run.
#
#   expert_parallel_netns_test.sh HERD MODEL tcp|ucx [MPIRUN]
#
# Exit code: 0 pass, 1 fail, 77 skipped (not root / no iproute2).
set -euo pipefail
herd=$1 model=$2 transport=$3 mpirun=${4:-mpirun}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/herd-ep-netns-XXXXXX)
trap 'rm -rf "$work"' EXIT
ids=1,17,42,0,511,100,256,7,300,42,42,99,5,400,128,64

"$herd" generate --model "$model" --prompt-ids "$ids" --max-new-tokens 16 \
  --dump-logits "$work/single.f32" > "$work/single.out" 2> /dev/null

status=0
"$here/netns_mpirun.sh" --transport "$transport" --np 3 --mpirun "$mpirun" --timeout 300 -- \
  "$herd" generate --model "$model" --prompt-ids "$ids" --max-new-tokens 16 \
  --dump-logits "$work/ep.f32" > "$work/ep.out" 2> "$work/ep.err" || status=$?
if [ "$status" -eq 77 ]; then echo "skipped: $(tail -1 "$work/ep.err")"; exit 77; fi
if [ "$status" -ne 0 ]; then
  echo "FAIL: 3 ranks over $transport exited $status"; cat "$work/ep.err"; exit 1
fi
if ! cmp -s "$work/single.out" "$work/ep.out"; then
  echo "FAIL: tokens differ"; cat "$work/single.out" "$work/ep.out"; exit 1
fi
if ! cmp -s "$work/single.f32" "$work/ep.f32"; then
  echo "FAIL: logits differ from the single process"; exit 1
fi
echo "PASS: 3 ranks in 3 namespaces over $transport: tokens and logits identical ($(cat "$work/ep.out"))"
