#!/usr/bin/env python3
"""Online expert rebalancing in herd serve, under mpirun -np 4 (--mode mpi) or
four local ranks (--mode single runs --local-ranks 4).

The model is synthesized with a skewed router (`herd synth --hot-experts 2`:
experts 0 and 1 of every layer get most tokens) and served from a placement
that puts both hot experts on rank 0. First a server without rebalancing
answers a concurrent streaming workload: its greedy outputs are the
reference, and the expert rows each rank computed (herd:ep_rank_expert_rows_total)
give the imbalance (max / mean over ranks) of the bad placement. Then a
server with --rebalance answers the same workload, streamed concurrently,
while it re-plans and migrates. Checks:
  - herd:placement_version rises, and it rose while streams were open;
  - every streamed request completes ([DONE], finish_reason "length", no
    error event) with exactly the reference ids;
  - a workload run after the switch has a lower imbalance than the same
    workload on the bad placement;
  - no step waited for weight loading (herd:rebalance_blocked_steps_total is
    0), bytes were moved in the background (herd:expert_bytes_moved_total,
    herd:rebalance_seconds).
"""

import os
import random
import subprocess
import threading
import time

import serve_harness as h

NUM_RANKS = 4
NUM_PROMPTS = 24
MAX_TOKENS = 96
BAD_PLACEMENT = """format: herd-placement/v1
num_experts: 8
num_ranks: 4
layers:
  - ranks: [[0, 1, 2], [3, 4, 5], [6, 7, 2], [3, 4, 5]]
  - ranks: [[0, 1, 2], [3, 4, 5], [6, 7, 2], [3, 4, 5]]
"""
REBALANCE_FLAGS = ["--rebalance", "--rebalance-window-steps", "16", "--rebalance-threshold",
                   "1.2", "--rebalance-min-interval-s", "0"]


def rank_rows(port):
    samples = h.scrape(port)
    return [h.metric_sum(samples, "herd:ep_rank_expert_rows_total", rank=str(r)) or 0.0
            for r in range(NUM_RANKS)]


def imbalance(before, after):
    rows = [b - a for a, b in zip(before, after)]
    mean = sum(rows) / len(rows)
    return max(rows) / mean if mean > 0 else 1.0


def run_workload(server, prompts, on_open=None):
    """Streams every prompt at once; returns the results in prompt order and
    checks each completed cleanly."""
    barrier = threading.Barrier(len(prompts))

    def client(prompt):
        barrier.wait(timeout=60)
        return h.stream_completion(server.port, h.completion_body(prompt, MAX_TOKENS, stream=True),
                                   timeout=240)

    results = h.run_parallel(client, prompts)
    for i, result in enumerate(results):
        h.check(not isinstance(result, Exception), f"prompt {i}: {result!r}")
        h.check(result.status == 200 and result.done and result.error_event is None and
                not result.bad_events and result.finish_reason == "length" and
                len(result.token_ids) == MAX_TOKENS,
                f"prompt {i}: {result.describe()}\n{server.log_tail()}")
    return [r.token_ids for r in results]


def server_args(args, extra):
    placement = os.path.join(args.work_dir, "bad-placement.yaml")
    flags = ["--placement", placement, "--max-running", "64", "--kv-cache-bytes", "67108864"]
    if args.mode == "single":
        flags += ["--local-ranks", str(NUM_RANKS)]
    return flags + extra


def test(args):
    args.work_dir = h.make_temp_dir("herd-rebalance-")
    model = os.path.join(args.work_dir, "skewed.gguf")
    cmd = [args.herd, "synth", "--layers", "2", "--hidden", "64", "--experts", "8", "--top-k", "2",
           "--ffn", "128", "--vocab", "512", "--hot-experts", "2", "--seed", "7", "--out", model]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    h.check(proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}")
    with open(os.path.join(args.work_dir, "bad-placement.yaml"), "w") as f:
        f.write(BAD_PLACEMENT)
    args.model = model

    rng = random.Random(args.seed)
    prompts = [h.random_prompt(rng, rng.randrange(4, 24)) for _ in range(NUM_PROMPTS)]

    # The reference: the bad placement, no rebalancing.
    with h.Server(args, server_args(args, []), name="static", num_ranks=NUM_RANKS) as server:
        before = rank_rows(server.port)
        reference = run_workload(server, prompts)
        static_imbalance = imbalance(before, rank_rows(server.port))
        samples = h.scrape(server.port)
        h.check(h.metric_sum(samples, "herd:placement_version") == 1,
                "the static server changed placements")
        h.log(f"without rebalancing: imbalance {static_imbalance:.3f} over the workload")
        h.check(static_imbalance > 1.5,
                f"the skewed model on the bad placement should be unbalanced, got "
                f"{static_imbalance:.3f}")

    with h.Server(args, server_args(args, REBALANCE_FLAGS), name="rebalance",
                  num_ranks=NUM_RANKS) as server:
        # Wave 1: the rebalance happens while these stream (the window fills
        # after 16 of their decode steps).
        h.check(h.metric_sum(h.scrape(server.port), "herd:placement_version") == 1,
                "placement_version is not 1 before any traffic")
        versions_while_open = []
        streaming = threading.Event()
        streaming.set()

        def poll():
            while streaming.is_set():
                try:
                    samples = h.scrape(server.port)
                    running = h.metric_sum(samples, "herd:num_requests_running") or 0
                    version = h.metric_sum(samples, "herd:placement_version") or 0
                    if running > 0:
                        versions_while_open.append(version)
                except (OSError, h.TestFailure):
                    pass
                time.sleep(0.01)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            wave1 = run_workload(server, prompts)
        finally:
            streaming.clear()
            poller.join()
        for i, (got, want) in enumerate(zip(wave1, reference)):
            h.check(got == want, f"prompt {i} during the rebalance: ids {got}, without "
                                 f"rebalancing {want}")
        samples = h.scrape(server.port)
        version = h.metric_sum(samples, "herd:placement_version")
        h.check(version is not None and version >= 2,
                f"placement_version {version} after the skewed workload\n{server.log_tail()}")
        h.check(any(v >= 2 for v in versions_while_open),
                f"no new placement while requests streamed: versions seen "
                f"{sorted(set(versions_while_open))}")

        # Wave 2, on the new placement.
        version_before = version
        before = rank_rows(server.port)
        wave2 = run_workload(server, prompts)
        rebalanced_imbalance = imbalance(before, rank_rows(server.port))
        for i, (got, want) in enumerate(zip(wave2, reference)):
            h.check(got == want, f"prompt {i} after the rebalance: ids {got}, without "
                                 f"rebalancing {want}")
        samples = h.scrape(server.port)
        h.log(f"with rebalancing: placement version {version_before:.0f}, imbalance "
              f"{rebalanced_imbalance:.3f} (was {static_imbalance:.3f}), "
              f"{h.metric_sum(samples, 'herd:expert_bytes_moved_total'):.0f} bytes moved, "
              f"{h.metric_sum(samples, 'herd:rebalance_seconds_count'):.0f} migration(s) taking "
              f"{h.metric_sum(samples, 'herd:rebalance_seconds_sum'):.4f} s")
        h.check(rebalanced_imbalance < static_imbalance * 0.8,
                f"imbalance {rebalanced_imbalance:.3f} after rebalancing, "
                f"{static_imbalance:.3f} before")
        h.check(h.metric_sum(samples, "herd:rebalance_blocked_steps_total") == 0,
                "a step waited for expert weights to load")
        h.check((h.metric_sum(samples, "herd:expert_bytes_moved_total") or 0) > 0,
                "no expert bytes were moved")
        h.check((h.metric_sum(samples, "herd:rebalance_seconds_count") or 0) >= 1,
                "no migration was timed")
        h.check("rebalance: switched to placement version" in server.log_text(),
                f"no switch in the log\n{server.log_tail()}")
        h.assert_alive(server, "the rebalancing workload")
        h.wait_idle(server, "the rebalancing workload")


if __name__ == "__main__":
    h.run_test(test, __doc__)
