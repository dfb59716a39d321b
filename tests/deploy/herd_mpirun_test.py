#!/usr/bin/env python3
"""deploy/mpirun/herd-mpirun, run for real: its dry run builds the mpirun command for
each transport, its pre-flight refuses a model the hosts cannot read (exit 2, nothing
started), and a real launch of two ranks on this host serves requests and drains on
SIGTERM. The signal goes to the launcher, as a service manager sends it. Every
accepted stream completes with all its tokens, the launcher exits 0, and no process
is left behind.

Usage: herd_mpirun_test.py --herd build/tools/herd --model tests/data/llamacpp-tiny/tiny-q4_0.gguf
"""

import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration",
                                "serve"))
import serve_harness as h  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "deploy", "mpirun", "herd-mpirun")
MAX_TOKENS = 1500


def write_config(directory, model):
    path = os.path.join(directory, "serve.yaml")
    with open(path, "w") as f:
        f.write(f"model: {model}\nengine:\n  threads: 1\nserve:\n  host: 127.0.0.1\n"
                f"  port: 0\n  drain_timeout_s: 120\n")
    return path


def run(args, timeout=60):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def test(args):
    directory = h.make_temp_dir("herd-mpirun-test-")
    config = write_config(directory, os.path.abspath(args.model))
    base = [LAUNCHER, "--herd", os.path.abspath(args.herd), "--mpirun", args.mpirun,
            "--config", config, "--np", "2", "--iface", "lo"]

    dry = run(base + ["--dry-run"])
    h.check(dry.returncode == 0, f"dry run failed: {dry.stdout}{dry.stderr}")
    for expected in ["-np 2", "--mca pml ob1", "--mca btl self,vader,tcp",
                     "--mca btl_tcp_if_include lo", "--mca oob_tcp_if_include lo",
                     f"serve --config {config}"]:
        h.check(expected in dry.stdout, f"the tcp dry run lacks '{expected}':\n{dry.stdout}")
    ucx = run(base + ["--transport", "ucx", "--dry-run"])
    h.check(ucx.returncode == 0 and "--mca pml ucx" in ucx.stdout and
            "UCX_NET_DEVICES=lo" in ucx.stdout, f"the ucx dry run: {ucx.stdout}{ucx.stderr}")
    bad = run(base + ["--transport", "rdma"])
    h.check(bad.returncode == 2 and "tcp or ucx" in bad.stderr, f"a bad transport: {bad.stderr}")

    missing = write_config(h.make_temp_dir("herd-mpirun-missing-"), "/nonexistent/model.gguf")
    refused = run([LAUNCHER, "--herd", os.path.abspath(args.herd), "--mpirun", args.mpirun,
                   "--config", missing, "--np", "2", "--iface", "lo"])
    h.check(refused.returncode == 2 and "cannot read the model /nonexistent/model.gguf"
            in refused.stderr, f"pre-flight with a missing model: {refused.returncode} "
            f"{refused.stdout}{refused.stderr}")

    port_file = os.path.join(directory, "port")
    log_path = os.path.join(directory, "launcher.log")
    with open(log_path, "w") as log:
        launcher = subprocess.Popen(base + ["--", "--port-file", port_file], stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (os.path.exists(port_file) and os.path.getsize(port_file) > 0):
            h.check(launcher.poll() is None and time.monotonic() < deadline,
                    f"the launcher did not start serving:\n{open(log_path).read()[-3000:]}")
            time.sleep(0.2)
        port = int(open(port_file).read().strip())
        h.log(f"serving on port {port}")
        results = [None, None]
        # SIGTERM only once both streams are accepted (each has a token): a
        # stream still connecting would rightly be refused by the draining
        # server.
        first = [threading.Event(), threading.Event()]

        def stream(i):
            results[i] = h.stream_completion(
                port, h.completion_body([5 + i, 6, 7], MAX_TOKENS, stream=True), timeout=300,
                on_first_token=first[i].set)

        threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        for i, event in enumerate(first):
            h.check(event.wait(60), f"stream {i}: no token within 60 s")
        launcher.send_signal(signal.SIGTERM)
        h.log("SIGTERM sent to the launcher")
        for t in threads:
            t.join(240)
        for i, r in enumerate(results):
            h.check(r is not None and r.done and r.finish_reason == "length" and
                    len(r.token_ids) == MAX_TOKENS,
                    f"stream {i} after SIGTERM: {r.describe() if r else None}")
        code = launcher.wait(60)
        output = open(log_path).read()
        h.check(code == 0, f"the launcher exited {code}:\n{output[-3000:]}")
        h.check("draining (signal sent to rank 0" in output, f"no drain notice:\n{output[-2000:]}")
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)
    time.sleep(1)
    leftovers = subprocess.run(["pgrep", "-s", str(launcher.pid)], capture_output=True,
                               text=True).stdout.split()
    h.check(not leftovers, f"processes left in the launcher's session: {leftovers}")


if __name__ == "__main__":
    h.run_test(test, __doc__)
