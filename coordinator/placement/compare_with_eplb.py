#!/usr/bin/env python3
"""Runs `herd plan` on every trace and cluster case of the placement fixtures
and prints the comparison with DeepSeek's EPLB as Markdown tables (the ones in
docs/placement.md).

    coordinator/placement/compare_with_eplb.py [--herd build/tools/herd] \
        [--data tests/data/placement] > /tmp/compare.md

For each case Herd gets EPLB's constraints: the same slots (R), ranks (G) and
groups (K), hierarchical mode where EPLB took its hierarchical path (groups
kept inside nodes), global mode otherwise, one planning thread (EPLB's
runtimes were measured with one torch thread). Imbalance is max/mean rank load,
the mean over layers (and over the 10 snapshots of drift traces).
"""
import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import tempfile

# herd plan needs --out; the placements themselves are not kept.
PLACEMENT_OUT = os.path.join(tempfile.gettempdir(), "herd-compare-placement.yaml")


def plan(herd, trace_path, case, snapshot, split, repeat, out, extra=()):
    r, k, n, g = case["num_replicas"], case["num_groups"], case["num_nodes"], case["num_gpus"]
    hierarchical = case["eplb_code_path"] == "hierarchical"
    nodes = n if hierarchical or g % n == 0 else 1
    args = [herd, "plan", "--trace", trace_path, "--nodes", str(nodes),
            "--ranks-per-node", str(g // nodes), "--redundant", str(r - case["num_experts"]),
            "--groups", str(k), "--mode", "hierarchical" if hierarchical else "global",
            "--split", split, "--snapshot", str(snapshot), "--threads", "1", "--json",
            "--repeat", str(repeat), "--out", out] + list(extra)
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def migration_table(herd, data, tolerance):
    """Drift traces: plan snapshot 0, then every later snapshot migration-aware
    from the placement deployed for the one before."""
    summary = {}
    with open(os.path.join(data, "summary.csv")) as f:
        for row in csv.DictReader(f):
            summary[(row["trace"], row["case_id"])] = row
    print("\n| trace | case (R, K, N, G) | stale map | Herd replan | Herd migration | moved, Herd"
          " replan | moved, Herd migration | EPLB replan | moved, EPLB replan |")
    print("|---|---|---|---|---|---|---|---|---|")
    tmp = tempfile.mkdtemp(prefix="herd-migration-")
    for shape in ["mixtral8x7b", "olmoe", "qwen3moe30b", "dsv3"]:
        name = f"{shape}_drift"
        trace_path = os.path.join(data, "traces", name + ".json.gz")
        with gzip.open(os.path.join(data, "eplb", name + ".eplb.json.gz")) as f:
            eplb = json.load(f)
        with gzip.open(trace_path) as f:
            trace = json.load(f)
        for case in eplb["cases"]:
            case["num_experts"] = trace["num_experts"]
            deployed = os.path.join(tmp, "t0.yaml")
            plan(herd, trace_path, case, 0, "weighted", 1, deployed)
            stale = replan = migrated = moved_replan = moved_migrated = 0.0
            steps = trace["num_snapshots"] - 1
            for t in range(1, trace["num_snapshots"]):
                out = os.path.join(tmp, f"t{t}.yaml")
                j = plan(herd, trace_path, case, t, "weighted", 1, out,
                         ["--current", deployed, "--balance-tolerance", str(tolerance)])
                stale += j["imbalance_before"] / steps
                migrated += j["imbalance_after"] / steps
                moved_migrated += j["experts_moved_fraction"] / steps
                replan += j["replan_from_scratch"]["imbalance_after"] / steps
                moved_replan += j["replan_from_scratch"]["experts_moved_fraction"] / steps
                deployed = out
            row = summary[(name, case["case_id"])]
            cid = f"{case['num_replicas']}, {case['num_groups']}, {case['num_nodes']}, {case['num_gpus']}"
            print(f"| {name} | {cid} | {stale:.4f} | {replan:.4f} | {migrated:.4f} |"
                  f" {100 * moved_replan:.1f}% | {100 * moved_migrated:.1f}% |"
                  f" {float(row['eplb_bal']):.4f} | {100 * float(row['gpu_new_expert_frac']):.1f}% |",
                  flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--herd", default="build/tools/herd")
    parser.add_argument("--data", default="tests/data/placement")
    parser.add_argument("--repeat", type=int, default=5,
                        help="planning runs per snapshot for the runtime (the best is kept, as "
                             "for EPLB's recorded runtimes)")
    parser.add_argument("--balance-tolerance", type=float, default=0.02,
                        help="migration-aware mode's accepted imbalance loss")
    args = parser.parse_args()

    shapes = ["mixtral8x7b", "olmoe", "qwen3moe30b", "dsv3"]
    families = ["zipf0.5", "zipf1.0", "zipf1.5", "hot5-40", "drift"]
    print("| trace | case (R, K, N, G) | EPLB path | EPLB | Herd, even split | Herd (default) |"
          " lower bound | EPLB dups | Herd dups (even/default) | EPLB runtime | Herd runtime |"
          " speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    worse = 0
    for shape in shapes:
        for family in families:
            name = f"{shape}_{family}"
            trace_path = os.path.join(args.data, "traces", name + ".json.gz")
            with gzip.open(os.path.join(args.data, "eplb", name + ".eplb.json.gz")) as f:
                eplb = json.load(f)
            with gzip.open(trace_path) as f:
                num_experts = json.load(f)["num_experts"]
            for case in eplb["cases"]:
                case["num_experts"] = num_experts
                snaps = case["snapshots"]
                e_bal = sum(s["eplb"]["balancedness"]["mean"] for s in snaps) / len(snaps)
                e_dups = sum(s["dup_same_gpu"] for s in snaps)
                e_time = min(s["runtime_s"]["min"] for s in snaps)
                h_even = h_def = bound = 0.0
                d_even = d_def = 0
                h_time = float("inf")
                for s in snaps:
                    even = plan(args.herd, trace_path, case, s["snapshot"], "even", 1,
                                PLACEMENT_OUT)
                    h_even += even["imbalance_after"] / len(snaps)
                    d_even += even["duplicate_replicas"]
                    default = plan(args.herd, trace_path, case, s["snapshot"], "weighted",
                                   args.repeat, PLACEMENT_OUT)
                    h_time = min(h_time, default["runtime_seconds"])
                    h_def += default["imbalance_after"] / len(snaps)
                    d_def += default["duplicate_replicas"]
                    b = default["lower_bound_hierarchical"]
                    bound += (b if b is not None else default["lower_bound"]) / len(snaps)
                if h_even > e_bal + 5e-5 or h_def > e_bal + 5e-5:
                    worse += 1
                cid = f"{case['num_replicas']}, {case['num_groups']}, {case['num_nodes']}, {case['num_gpus']}"
                print(f"| {name} | {cid} | {case['eplb_code_path']} | {e_bal:.4f} | {h_even:.4f} |"
                      f" {h_def:.4f} | {bound:.4f} | {e_dups} | {d_even}/{d_def} |"
                      f" {e_time * 1e3:.2f} ms | {h_time * 1e3:.2f} ms | {e_time / h_time:.0f}x |",
                      flush=True)
    print(f"\ncases where Herd is worse than EPLB: {worse}", file=sys.stderr)
    migration_table(args.herd, args.data, args.balance_tolerance)


if __name__ == "__main__":
    main()
