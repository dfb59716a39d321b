#!/usr/bin/env bash
# Runs an MPI command across several "hosts" on one machine: Linux network
# namespaces joined by veths to a bridge, MPI over TCP (or UCX over TCP)
# between them; or, with --launch env, ranks of the ucx backend started
# without mpirun, each from its environment. The recipe is ENVIRONMENT.md §3; this script makes it
# reusable and safe to run in parallel (namespace names carry this script's
# PID) and always removes what it created (trap), whatever happens.
#
#   netns_mpirun.sh [options] -- COMMAND [ARGS...]
#
# Options:
#   --launch mpirun|env   start the ranks with mpirun (default), or without it:
#                         each rank is started in its host's namespace with only
#                         the ucx backend's variables (HERD_RANK, HERD_WORLD_SIZE,
#                         HERD_LEADER_ADDRESS=10.200.0.1, HERD_LEADER_PORT;
#                         comm/ucx/ucx_env.h), UCX_NET_DEVICES=ec0 and
#                         UCX_TLS=tcp,sm,self; rank 0's stdout is this script's,
#                         the others' goes to stderr; implies --transport ucx
#   --transport tcp|ucx   pml ob1 + btl tcp (default), or pml ucx with UCX_TLS=tcp,sm,self
#   --np N                MPI ranks (default 3), spread over the hosts round-robin
#   --hosts H             namespaces (default 3)
#   --mpirun PATH         mpirun to use (default: mpirun from PATH)
#   --env NAME            pass environment variable NAME to the ranks (repeatable)
#   --min-rx-bytes B      fail unless every host's ec0 received at least B bytes
#                         (proves that traffic really crossed the veths)
#   --timeout S           kill mpirun after S seconds (default 600)
#
# Layout: host i is namespace ${PREFIX}h$i with veth ec0 = 10.200.0.i/24; the
# other ends sit on bridge br0 in namespace ${PREFIX}s. The root namespace gets
# no address and no route. mpirun runs inside host 1 and starts orted on the
# others through a plm_rsh_agent that enters the host's namespace in a new UTS
# namespace named after it (so that Open MPI sees distinct nodes).
#
# Exit code: mpirun's (env: the first nonzero rank's); 77 when not root or iproute2/unshare are missing
# (ctest: SKIP_RETURN_CODE 77); 2 for bad usage.
set -uo pipefail

launch=mpirun
transport=tcp
np=3
num_hosts=3
mpirun=mpirun
min_rx_bytes=0
timeout_s=600
env_names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --launch) launch=$2; shift 2 ;;
    --transport) transport=$2; shift 2 ;;
    --np) np=$2; shift 2 ;;
    --hosts) num_hosts=$2; shift 2 ;;
    --mpirun) mpirun=$2; shift 2 ;;
    --env) env_names+=("$2"); shift 2 ;;
    --min-rx-bytes) min_rx_bytes=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "netns_mpirun: unknown option '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ $# -eq 0 ]; then echo "netns_mpirun: no command after --" >&2; exit 2; fi
case "$transport" in tcp|ucx) ;; *) echo "netns_mpirun: --transport tcp|ucx" >&2; exit 2 ;; esac
case "$launch" in
  mpirun) ;;
  env) transport=ucx ;;
  *) echo "netns_mpirun: --launch mpirun|env" >&2; exit 2 ;;
esac
if [ "$num_hosts" -lt 1 ] || [ "$num_hosts" -gt 200 ]; then
  echo "netns_mpirun: --hosts must be 1..200" >&2; exit 2
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "netns_mpirun: SKIP: needs root to create network namespaces" >&2; exit 77
fi
for tool in ip unshare timeout; do
  if ! command -v "$tool" >/dev/null; then
    echo "netns_mpirun: SKIP: '$tool' not found (install iproute2 / util-linux)" >&2; exit 77
  fi
done
if [ "$launch" = mpirun ]; then
  if ! command -v "$mpirun" >/dev/null; then
    echo "netns_mpirun: mpirun '$mpirun' not found" >&2; exit 2
  fi
  mpirun=$(command -v "$mpirun")
fi

prefix="hn$$"
switch="${prefix}s"
hosts=()
for i in $(seq 1 "$num_hosts"); do hosts+=("${prefix}h$i"); done
work=$(mktemp -d "${TMPDIR:-/tmp}/herd-netns.XXXXXX")

# shellcheck disable=SC2317  # called by the trap below
cleanup() {
  local ns
  for ns in "${hosts[@]}" "$switch"; do
    if ip netns list 2>/dev/null | grep -qw "^$ns"; then
      # No rank or orted may outlive the namespace.
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
      ip netns del "$ns" 2>/dev/null
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

set -e
ip netns add "$switch"
ip -n "$switch" link add br0 type bridge
ip -n "$switch" link set br0 up
ip -n "$switch" link set lo up
for i in $(seq 1 "$num_hosts"); do
  ns=${hosts[$((i - 1))]}
  ip netns add "$ns"
  # Created straight inside the namespaces under names unique to this run,
  # so parallel runs never collide in the root namespace.
  ip link add "${prefix}i$i" netns "$ns" type veth peer name "sw$i" netns "$switch"
  ip -n "$ns" link set "${prefix}i$i" name ec0
  ip -n "$ns" addr add "10.200.0.$i/24" dev ec0
  ip -n "$ns" link set ec0 up
  ip -n "$ns" link set lo up
  ip -n "$switch" link set "sw$i" master br0
  ip -n "$switch" link set "sw$i" up
done
set +e

cat >"$work/agent.sh" <<EOF
#!/bin/bash
# plm_rsh_agent: Open MPI calls it as 'agent HOST COMMAND...' in place of ssh.
host="\$1"; shift
case "\$host" in
  ${prefix}h[0-9]*) ns="\$host" ;;
  10.200.0.[0-9]*) ns="${prefix}h\${host##*.}" ;;
  *) echo "netns agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts /bin/sh -c "hostname \$ns; \$*"
EOF
chmod +x "$work/agent.sh"
slots=$(((np + num_hosts - 1) / num_hosts))
for ns in "${hosts[@]}"; do echo "$ns slots=$slots"; done >"$work/hostfile"

args=(--allow-run-as-root --hostfile "$work/hostfile" --map-by node -np "$np"
      --mca plm_rsh_agent "$work/agent.sh" --mca oob_tcp_if_include 10.200.0.0/24
      --mca mpi_yield_when_idle 1 --mca btl_tcp_if_include 10.200.0.0/24)
# shellcheck disable=SC2054  # the commas separate MCA values, not array items
if [ "$transport" = tcp ]; then
  args+=(--mca pml ob1 --mca btl tcp,vader,self)
else
  args+=(--mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any
         -x UCX_NET_DEVICES=ec0 -x UCX_TLS=tcp,sm,self)
fi
for name in "${env_names[@]}"; do args+=(-x "$name"); done

rx_bytes() { ip netns exec "$1" cat /sys/class/net/ec0/statistics/rx_bytes; }
declare -A rx_before
for ns in "${hosts[@]}"; do rx_before[$ns]=$(rx_bytes "$ns"); done

if [ "$launch" = mpirun ]; then
  command_line=$(printf '%q ' timeout -s KILL "$timeout_s" "$mpirun" "${args[@]}" "$@")
  echo "netns_mpirun: $np ranks on ${num_hosts} namespaces (${hosts[*]}), transport $transport" >&2
  ip netns exec "${hosts[0]}" unshare --uts /bin/sh -c "hostname ${hosts[0]}; $command_line"
  rc=$?
  [ "$rc" -eq 137 ] && echo "netns_mpirun: mpirun killed after ${timeout_s} s" >&2
else
  # No mpirun: rank r runs in host r mod num_hosts, in a UTS namespace named
  # after it, and finds the others through rank 0 on host 1 (10.200.0.1).
  echo "netns_mpirun: $np ranks on ${num_hosts} namespaces (${hosts[*]}), launched from env" >&2
  rank_pids=()
  for rank in $(seq 0 $((np - 1))); do
    ns=${hosts[$((rank % num_hosts))]}
    # shellcheck disable=SC2054  # the commas separate UCX_TLS values, not array items
    rank_env=(HERD_RANK="$rank" HERD_WORLD_SIZE="$np" HERD_LEADER_ADDRESS=10.200.0.1
              HERD_LEADER_PORT=29500 UCX_NET_DEVICES=ec0 UCX_TLS=tcp,sm,self)
    for name in "${env_names[@]}"; do rank_env+=("$name=${!name-}"); done
    command_line=$(printf '%q ' env "${rank_env[@]}" timeout -s KILL "$timeout_s" "$@")
    if [ "$rank" -eq 0 ]; then
      ip netns exec "$ns" unshare --uts /bin/sh -c "hostname $ns; exec $command_line" &
    else
      ip netns exec "$ns" unshare --uts /bin/sh -c "hostname $ns; exec $command_line" >&2 &
    fi
    rank_pids+=($!)
  done
  rc=0
  for rank in $(seq 0 $((np - 1))); do
    wait "${rank_pids[$rank]}"
    status=$?
    if [ "$status" -ne 0 ]; then
      echo "netns_mpirun: rank $rank exited $status" >&2
      [ "$rc" -eq 0 ] && rc=$status
    fi
  done
fi

for ns in "${hosts[@]}"; do
  received=$(($(rx_bytes "$ns") - rx_before[$ns]))
  echo "netns_mpirun: $ns ec0 received $received bytes" >&2
  if [ "$received" -lt "$min_rx_bytes" ]; then
    echo "netns_mpirun: FAIL: $ns received less than $min_rx_bytes bytes over ec0" >&2
    [ "$rc" -eq 0 ] && rc=1
  fi
done
exit "$rc"
