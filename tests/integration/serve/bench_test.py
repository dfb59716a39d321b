#!/usr/bin/env python3
"""`herd bench serve` against a real `herd serve`: every request completes,
the token counts it reports equal what the server's /metrics counted, its
latency samples are one TTFT per request and at most one ITL per token after
the first; with a tiny queue (--max-running 1 --max-waiting 1, and --api-key) it
retries the 429s and still completes every request.
"""

import json
import subprocess

import serve_harness as h

REQUESTS = 48
GEN_LEN = 12
PROMPT_LEN = 16


def bench(args, port, *flags, expect_ok=True):
    cmd = [args.herd, "bench", "serve", "--url", f"http://127.0.0.1:{port}",
           "--vocab", str(h.TINY_VOCAB), "--prompt-len", str(PROMPT_LEN),
           "--gen-len", str(GEN_LEN), "--requests", str(REQUESTS), *flags]
    h.log(" ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if expect_ok:
        h.check(proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def check_report(report, what, stream=True):
    h.check(report["completed"] == REQUESTS and report["failed"] == 0,
            f"{what}: completed {report['completed']}, failed {report['failed']}, "
            f"errors {report['errors']}")
    h.check(report["total_output_tokens"] == REQUESTS * GEN_LEN,
            f"{what}: {report['total_output_tokens']} output tokens, expected "
            f"{REQUESTS} x {GEN_LEN} (ignore_eos)")
    h.check(report["total_input_tokens"] == REQUESTS * PROMPT_LEN,
            f"{what}: {report['total_input_tokens']} input tokens")
    h.check(report["e2e"]["samples"] == REQUESTS, f"{what}: e2e samples {report['e2e']}")
    if stream:
        h.check(report["ttft"]["samples"] == REQUESTS, f"{what}: ttft samples {report['ttft']}")
        # One per token of every chunk but the first (which may hold several).
        h.check(0 < report["itl"]["samples"] <= REQUESTS * (GEN_LEN - 1),
                f"{what}: itl samples {report['itl']['samples']}, expected 1 to "
                f"{REQUESTS * (GEN_LEN - 1)}")
        h.check(0 < report["ttft"]["p50_ms"] <= report["e2e"]["p50_ms"],
                f"{what}: TTFT p50 {report['ttft']['p50_ms']} ms, E2E p50 "
                f"{report['e2e']['p50_ms']} ms")
    for key in ("request_throughput", "output_throughput", "total_token_throughput"):
        h.check(report[key] > 0, f"{what}: {key} {report[key]}")


def test(args):
    with h.Server(args) as server:
        streamed = json.loads(bench(args, server.port, "--concurrency", "8", "--json").stdout)
        check_report(streamed, "streamed")
        plain = json.loads(bench(args, server.port, "--concurrency", "4", "--stream", "false",
                                 "--seed", "2", "--json").stdout)
        check_report(plain, "not streamed", stream=False)
        counted = h.metric_sum(h.scrape(server.port), "herd:generation_tokens_total")
        reported = streamed["total_output_tokens"] + plain["total_output_tokens"]
        h.check(counted == reported, f"the server counted {counted} generated tokens, herd bench "
                f"serve {reported}")
        table = bench(args, server.port, "--concurrency", "8").stdout
        h.log("herd bench serve's table:\n" + table)
        h.check("| requests ok |" in table and "| TTFT " in table and "| ITL " in table,
                f"the table lacks its rows:\n{table}")

    with h.Server(args, ["--max-running", "1", "--max-waiting", "1", "--api-key", "k"],
                  name="bench-429") as server:
        refused = bench(args, server.port, "--json", expect_ok=False)
        h.check(refused.returncode != 0 and "401" in refused.stderr,
                f"herd bench serve without the API key: exit {refused.returncode}, stderr "
                f"{refused.stderr!r}, expected an error naming HTTP 401")
        report = json.loads(bench(args, server.port, "--concurrency", "16", "--api-key", "k",
                                  "--json").stdout)
        check_report(report, "16 clients on a queue of 2")
        h.log(f"16 clients on a queue of 2: {report['retries_429']} retries after 429")


if __name__ == "__main__":
    h.run_test(test, __doc__)
