#!/usr/bin/env python3
"""An idle `herd serve` leaves the CPU alone. After one request, with nothing
to do, every rank (rank 0 alone, or both ranks under mpirun -np 2) must use
under a quarter of a core, read from /proc/<pid>/stat over a few seconds.
Ranks other than 0 wait for the coordinator's next step plan on the control
channel; once idle for HERD_COMM_POLL_SLEEP_AFTER_MS (1 s) that wait sleeps
between polls instead of spinning.
"""

import os
import time

import serve_harness as h

SETTLE_S = 3      # past the channel's 1 s of yield-only polling
WINDOW_S = 4
MAX_CORE_SHARE = 0.25


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat (1-based), 12 and 13 here.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test(args):
    with h.Server(args) as server:
        response = h.http_request(server.port, "POST", "/v1/completions",
                                  h.completion_body([5, 6, 7], 8))
        h.check(response.status == 200, f"a warm-up request failed: {response}")
        time.sleep(SETTLE_S)
        pids = server.rank_pids()
        expected_ranks = 1 if args.mode == "single" else 2
        h.check(len(pids) == expected_ranks, f"found ranks {sorted(pids)}, expected "
                                             f"{expected_ranks}\n{server.log_tail()}")
        before = {rank: cpu_seconds(pid) for rank, pid in pids.items()}
        start = time.monotonic()
        time.sleep(WINDOW_S)
        elapsed = time.monotonic() - start
        for rank, pid in sorted(pids.items()):
            share = (cpu_seconds(pid) - before[rank]) / elapsed
            h.log(f"rank {rank}: {100 * share:.1f}% of a core while idle")
            h.check(share < MAX_CORE_SHARE,
                    f"idle rank {rank} used {100 * share:.0f}% of a core over {elapsed:.1f} s "
                    f"(limit {100 * MAX_CORE_SHARE:.0f}%)")
        server.stop()


if __name__ == "__main__":
    h.run_test(test, __doc__)
