#!/usr/bin/env python3
"""`herd bench serve` against a real `herd serve`: every request completes,
the token counts it reports equal what the server's /metrics counted, its
latency samples are one TTFT per request and at most one ITL per token after
the first; with a tiny queue (--max-running 1 --max-waiting 1, and --api-key) it
retries the 429s and still completes every request; whole responses on a
kept-alive connection take a millisecond, not the 40 ms of a delayed ACK;
with a shared prefix (--prefix-len) it reports the prompt tokens the server's
prefix cache held, as the server counted them (none with --no-prefix-caching).

Then (one process only) against a small HTTP server that behaves as
llama.cpp's llama-server does where herd's does not: it announces keep-alive
but drops a connection's next request unanswered, and streams a chunk with no
text for one token (a token ending inside a UTF-8 character) with the usage
at the end. Every request must complete, each served exactly once, and the
token count must be the server's usage, not the chunks with text.
"""

import http.client
import http.server
import json
import os
import socket
import socketserver
import subprocess
import threading
import time

import serve_harness as h

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

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


def check_report(report, what, stream=True, prefix_len=0):
    h.check(report["completed"] == REQUESTS and report["failed"] == 0,
            f"{what}: completed {report['completed']}, failed {report['failed']}, "
            f"errors {report['errors']}")
    h.check(report["total_output_tokens"] == REQUESTS * GEN_LEN,
            f"{what}: {report['total_output_tokens']} output tokens, expected "
            f"{REQUESTS} x {GEN_LEN} (ignore_eos)")
    h.check(report["total_input_tokens"] == REQUESTS * (prefix_len + PROMPT_LEN),
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


class PeerLikeHandler(http.server.BaseHTTPRequestHandler):
    """/v1/completions as llama-server streams it; the second request of a
    connection is dropped unanswered, as a server that closed the connection
    after its first response (keep-alive announced) leaves it."""

    protocol_version = "HTTP/1.1"
    answered = 0
    dropped = 0
    lock = threading.Lock()

    def setup(self):
        super().setup()
        self.requests_on_connection = 0

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests_on_connection += 1
        if self.requests_on_connection > 1:
            with self.lock:
                PeerLikeHandler.dropped += 1
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Keep-Alive", "timeout=5, max=100")
        self.end_headers()
        n = body["max_tokens"]
        events = [{"choices": [{"text": "" if i == 1 else f" t{i}", "index": 0,
                                "finish_reason": None}]} for i in range(n)]
        events.append({"choices": [{"text": "", "index": 0, "finish_reason": "length"}],
                       "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}})
        for event in events:
            self.write_chunk(f"data: {json.dumps(event)}\n\n")
        self.write_chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        with self.lock:
            PeerLikeHandler.answered += 1

    def write_chunk(self, text):
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


class QuickHandler(http.server.BaseHTTPRequestHandler):
    """Answers each /v1/completions at once, whole, keeping the connection
    (and with TCP_NODELAY, or its body would wait for the ACK of its headers)."""

    protocol_version = "HTTP/1.1"
    # The response_format of every request received.
    formats = []

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        QuickHandler.formats.append(body.get("response_format"))
        n = body["max_tokens"]
        data = json.dumps({"choices": [{"text": " t" * n, "index": 0, "finish_reason": "length"}],
                           "usage": {"prompt_tokens": len(body["prompt"]),
                                     "completion_tokens": n}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def test_peer_like_server(args):
    server = ThreadingServer(("127.0.0.1", 0), PeerLikeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        report = json.loads(bench(args, server.server_address[1], "--concurrency", "4",
                                  "--model-name", "peer", "--json").stdout)
    finally:
        server.shutdown()
        server.server_close()
    check_report(report, "a server that drops kept-alive connections")
    h.check(PeerLikeHandler.answered == REQUESTS,
            f"the server answered {PeerLikeHandler.answered} requests, expected each of the "
            f"{REQUESTS} once")
    # Every client's requests after its first found the connection dropped.
    h.check(PeerLikeHandler.dropped >= REQUESTS - 4,
            f"only {PeerLikeHandler.dropped} requests were dropped: the retry went untested")
    h.log(f"{PeerLikeHandler.dropped} dropped requests were sent again on a new connection")


def test_latency_of_a_quick_server(args):
    """A server that answers at once takes well under the 40 ms a client's
    request body would wait, with Nagle's algorithm, for the delayed ACK of
    its headers on a kept-alive connection."""
    server = ThreadingServer(("127.0.0.1", 0), QuickHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report = json.loads(bench(args, server.server_address[1], "--concurrency", "1",
                                  "--stream", "false", "--model-name", "quick",
                                  "--json").stdout)
    finally:
        server.shutdown()
        server.server_close()
    check_report(report, "a server that answers at once", stream=False)
    h.check(report["e2e"]["p50_ms"] < 25,
            f"E2E p50 {report['e2e']['p50_ms']} ms against a server that answers at once: "
            "the request waited for an ACK")
    h.check(QuickHandler.formats == [None] * REQUESTS,
            f"response_format without --json-mode: {set(map(str, QuickHandler.formats))}")
    QuickHandler.formats = []
    server = ThreadingServer(("127.0.0.1", 0), QuickHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        json_mode = json.loads(bench(args, server.server_address[1], "--concurrency", "1",
                                     "--stream", "false", "--model-name", "quick", "--json-mode",
                                     "--json").stdout)
    finally:
        server.shutdown()
        server.server_close()
    h.check(json_mode["json_mode"] and
            QuickHandler.formats == [{"type": "json_object"}] * REQUESTS,
            f"--json-mode sent response_format {set(map(str, QuickHandler.formats))}")
    # --json-schema sends the file's schema, its keys in the file's order.
    schema_path = os.path.join(ROOT, "configs/structured-output-example.json")
    with open(schema_path) as f:
        schema = json.load(f)
    QuickHandler.formats = []
    server = ThreadingServer(("127.0.0.1", 0), QuickHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with_schema = json.loads(bench(args, server.server_address[1], "--concurrency", "1",
                                       "--stream", "false", "--model-name", "quick",
                                       "--json-schema", schema_path, "--json").stdout)
    finally:
        server.shutdown()
        server.server_close()
    want = {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}
    h.check(with_schema["json_schema"] and QuickHandler.formats == [want] * REQUESTS,
            f"--json-schema sent response_format {QuickHandler.formats[:1]}")
    sent_order = list(QuickHandler.formats[0]["json_schema"]["schema"]["properties"])
    h.check(sent_order == list(schema["properties"]),
            f"--json-schema sent the properties as {sent_order}, not in the file's order")


def check_kept_alive_latency(port):
    """Whole responses on one kept-alive connection leave at once: with Nagle's
    algorithm the server's body waited for the client's delayed ACK of its
    headers, 40 ms on Linux, where the tiny model takes a millisecond."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    seconds = []
    try:
        for _ in range(21):
            start = time.monotonic()
            connection.request("POST", "/v1/completions", json.dumps(h.completion_body([5], 1)),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            body = response.read()
            seconds.append(time.monotonic() - start)
            h.check(response.status == 200, f"HTTP {response.status}: {body[:200]!r}")
    finally:
        connection.close()
    median_ms = 1000 * sorted(seconds)[len(seconds) // 2]
    h.log(f"one-token completions on a kept-alive connection: median {median_ms:.1f} ms")
    h.check(median_ms < 25, f"one-token completions on a kept-alive connection took {median_ms:.1f}"
            " ms (median of 21): the responses waited for ACKs")


def test(args):
    if args.mode == "single":
        test_peer_like_server(args)
        test_latency_of_a_quick_server(args)
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
        check_kept_alive_latency(server.port)

        # A shared 40-token prefix: once a request has computed it, the
        # others reuse its two whole blocks of 16 (as many as the server's
        # counter says: nothing is preempted with this cache).
        hits_before = h.metric_sum(h.scrape(server.port), "herd:prefix_cache_hits_total")
        shared = json.loads(bench(args, server.port, "--concurrency", "4", "--prefix-len", "40",
                                  "--seed", "3", "--json").stdout)
        check_report(shared, "a shared prefix", prefix_len=40)
        hits = h.metric_sum(h.scrape(server.port), "herd:prefix_cache_hits_total") - hits_before
        h.check(shared["total_cached_tokens"] == hits and
                (REQUESTS - 4) * 32 <= hits <= REQUESTS * 32,
                f"a shared 40-token prefix: {shared['total_cached_tokens']} cached prompt tokens "
                f"reported, {hits} counted by the server; expected 32 for each request after "
                "the first four")

    with h.Server(args, ["--no-prefix-caching"], name="bench-no-prefix") as server:
        computed = json.loads(bench(args, server.port, "--concurrency", "4", "--prefix-len",
                                    "40", "--seed", "3", "--json").stdout)
        check_report(computed, "a shared prefix without prefix caching", prefix_len=40)
        hits = h.metric_sum(h.scrape(server.port), "herd:prefix_cache_hits_total")
        h.check(computed["total_cached_tokens"] == 0 and hits == 0,
                f"--no-prefix-caching: {computed['total_cached_tokens']} cached prompt tokens "
                f"reported, {hits} counted")

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
