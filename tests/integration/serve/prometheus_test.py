#!/usr/bin/env python3
"""herd serve's /metrics as a real Prometheus sees them: Debian's prometheus
scrapes the server every second (generated config, loopback, temp TSDB);
after a known load, the values read back through Prometheus's HTTP API
(/api/v1/query) equal what the client counted: generated and prompt tokens,
requests finished by reason, first-token latencies observed, routed expert
calls (and none skipped); the
expert-parallel series (herd:ep_balancedness per layer, rank tokens) exist.
Skips (77) without a prometheus binary.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import serve_harness as h

PROMPT_LENS = [3, 9, 16, 30, 5, 12]
MAX_TOKENS = [4, 8, 16, 7, 12, 1]
NUM_LAYERS = 2  # the tiny model
TOP_K = 2


class Prometheus:
    def __init__(self, binary, target_port):
        self.binary = binary
        self.target_port = target_port
        self.proc = None

    def start(self, timeout=60):
        self.dir = h.make_temp_dir("herd-prometheus-")
        self.port = h.free_port()
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
                    "  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: herd\n    metrics_path: /metrics\n"
                    f"    static_configs:\n      - targets: ['127.0.0.1:{self.target_port}']\n")
        self.log_path = os.path.join(self.dir, "prometheus.log")
        cmd = [self.binary, f"--config.file={config}",
               f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        h.log(f"starting: {' '.join(cmd)}")
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=h._die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            h.check(self.proc.poll() is None,
                    f"prometheus exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready",
                                          timeout=5).status == 200:
                    return self
            except (OSError, urllib.error.URLError):
                pass
            h.check(time.monotonic() < deadline, f"prometheus not ready after {timeout} s")
            time.sleep(0.1)

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-3000:]
        except OSError:
            return ""

    def query(self, promql):
        """The instant vector of promql: [(labels dict, float)]."""
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?" +
               urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=10) as resp:
            reply = json.loads(resp.read())
        h.check(reply.get("status") == "success", f"query {promql}: {reply}")
        return [(r["metric"], float(r["value"][1])) for r in reply["data"]["result"]]

    def wait_for(self, promql, predicate, what, timeout=30):
        """Polls promql until predicate(result) holds; returns the result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise h.TestFailure(f"{what}: query {promql!r} gives {result} after {timeout} s")
            time.sleep(0.5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def value_is(expected):
    return lambda result: len(result) == 1 and result[0][1] == expected


def test(args):
    binary = args.prometheus if os.access(args.prometheus, os.X_OK) else shutil.which(
        "prometheus")
    if not binary:
        raise h.TestSkip(f"no prometheus binary ({args.prometheus}; apt-get install prometheus)")
    with h.Server(args) as server:
        prometheus = Prometheus(binary, server.port).start()
        try:
            prometheus.wait_for('up{job="herd"}', value_is(1.0), "the server as a scrape target")
            # Every series exists before the first request (docs/metrics.md).
            prometheus.wait_for("herd:generation_tokens_total", value_is(0.0),
                                "generation tokens before any request")

            generated = prompt_tokens = 0
            for i, (prompt_len, max_tokens) in enumerate(zip(PROMPT_LENS, MAX_TOKENS)):
                prompt = [(13 * i + j) % h.TINY_VOCAB for j in range(prompt_len)]
                body = h.completion_body(prompt, max_tokens, stream=i % 2 == 0)
                if i % 2 == 0:
                    r = h.stream_completion(server.port, body)
                    h.check(r.status == 200 and r.done, f"request {i}: {r.describe()}")
                    ids = r.token_ids
                else:
                    r = h.http_request(server.port, "POST", "/v1/completions", body)
                    h.check(r.status == 200, f"request {i}: {r!r}")
                    ids = r.json()["choices"][0]["token_ids"]
                h.check(len(ids) == max_tokens, f"request {i}: {len(ids)} ids, asked {max_tokens}")
                generated += len(ids)
                prompt_tokens += prompt_len
            num_requests = len(PROMPT_LENS)
            h.log(f"client counted {generated} generated, {prompt_tokens} prompt tokens in "
                  f"{num_requests} requests")

            # (metric, labels, expected, what)
            checks = [
                ("herd:generation_tokens_total", {}, generated, "generated tokens"),
                ("herd:prompt_tokens_total", {}, prompt_tokens, "prompt tokens"),
                ("herd:time_to_first_token_seconds_count", {}, num_requests,
                 "first-token latencies observed"),
                ("herd:e2e_request_latency_seconds_count", {}, num_requests,
                 "request latencies observed"),
                ("herd:request_success_total", {"finished_reason": "length"}, num_requests,
                 "requests finished by length"),
                ("herd:inter_token_latency_seconds_count", {}, generated - num_requests,
                 "inter-token latencies observed (one per token after the first)"),
                # Every prompt token and every generated token but the last of
                # each request runs through every layer's router, top-k each;
                # the tiny model has no skip thresholds.
                ("herd:expert_calls_total", {},
                 NUM_LAYERS * TOP_K * (prompt_tokens + generated - num_requests),
                 "routed expert calls"),
                ("herd:expert_calls_skipped_total", {}, 0, "expert calls skipped"),
            ]
            for metric, labels, expected, what in checks:
                selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
                promql = f"sum({metric}{{{selector}}})" if selector else f"sum({metric})"
                try:
                    prometheus.wait_for(promql, value_is(float(expected)), what, timeout=15)
                except h.TestFailure as e:
                    # Tell a wrong count from a scrape that never came.
                    direct = h.metric_sum(h.scrape(server.port), metric, **labels)
                    raise h.TestFailure(f"{e}; the client counted {expected}; the server's "
                                        f"/metrics has {direct}")
            h.log("Prometheus agrees with the client on every count")

            balance = prometheus.wait_for("herd:ep_balancedness", lambda r: len(r) > 0,
                                          "herd:ep_balancedness")
            layers = sorted(int(labels.get("layer", -1)) for labels, _ in balance)
            h.check(layers == list(range(NUM_LAYERS)),
                    f"herd:ep_balancedness layers {layers}, expected 0..{NUM_LAYERS - 1}")
            for labels, value in balance:
                h.check(0.0 <= value <= 1.0, f"herd:ep_balancedness {labels} = {value}")
            world_size = 2 if args.mode in ("mpi", "cuda-ep") else 1
            ranks = prometheus.wait_for("herd:ep_rank_tokens_total", lambda r: len(r) > 0,
                                        "herd:ep_rank_tokens_total")
            h.check(sorted(int(l.get("rank", -1)) for l, _ in ranks) == list(range(world_size)),
                    f"herd:ep_rank_tokens_total ranks {[l for l, _ in ranks]}, expected "
                    f"0..{world_size - 1}")
            model_names = {l.get("model_name") for l, _ in balance + ranks}
            h.check(len(model_names) == 1 and None not in model_names,
                    f"model_name labels {model_names}, expected one")
        finally:
            prometheus.stop()


if __name__ == "__main__":
    h.run_test(test, __doc__)
