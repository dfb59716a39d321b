#!/usr/bin/env python3
"""herd serve's graceful shutdown. SIGTERM while long streamed requests run
(one at a time, --max-running 1, the others waiting) makes the server drain:
/ready stops answering 200, new requests get 503 with an OpenAI error body
(or, once the process is gone, connection refused), every request accepted
before the signal completes with all of its tokens, and the process exits 0
within --drain-timeout-s. Then a second server with --drain-timeout-s 1 and
more work than that: it exits within the timeout, and no client is left
hanging on a stream that never ends.

Under mpirun the signal goes to rank 0 (the coordinator), as a container
runtime sends it to the serving process; mpirun itself turns SIGTERM into
killing the job.
"""

import errno
import signal
import threading
import time

import serve_harness as h

NUM_LONG = 4
# How long a client may lag behind a stream the server has finished.
CLIENT_LAG_S = 5
PROMPT_LEN = 8
MAX_TOKENS = 1800  # the tiny model's context is 2048
DRAIN_TIMEOUT_S = 120  # generous: the CI machine runs other tests beside this one
# Exiting takes a moment after the last request: joining threads, MPI teardown.
EXIT_SLACK_S = 10
# How soon after SIGTERM the server must be draining.
NOTICE_S = 2


def start_long_requests(server, prompts, results):
    first_token = threading.Event()
    threads = []
    for i, prompt in enumerate(prompts):
        def run(i=i, prompt=prompt):
            try:
                results[i] = h.stream_completion(
                    server.port, h.completion_body(prompt, MAX_TOKENS, stream=True),
                    timeout=120, on_first_token=first_token.set)
            except Exception as e:  # noqa: BLE001 - checked below
                results[i] = e
        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
    return threads, first_token


def wait_in_system(server, num_requests, timeout=30):
    """Waits until the server holds num_requests (running + waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        m = h.scrape(server.port)
        running = h.metric_sum(m, "herd:num_requests_running") or 0
        waiting = h.metric_sum(m, "herd:num_requests_waiting") or 0
        if running + waiting >= num_requests:
            return running, waiting
        h.check(time.monotonic() < deadline,
                f"the server holds {running} running + {waiting} waiting requests, "
                f"expected {num_requests}")
        time.sleep(0.01)


def probe(server):
    """A new request during the drain: (kind, detail), kind one of '503',
    'refused', 'other'."""
    try:
        r = h.http_request(server.port, "POST", "/v1/completions",
                           h.completion_body([1, 2, 3], 4), timeout=30)
    except ConnectionRefusedError:
        return "refused", None
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            return "refused", None
        return "other", repr(e)
    if r.status == 503:
        h.check_error_json(r, 503, "a new request while draining")
        return "503", r
    return "other", r


def graceful_drain(args):
    prompts = [[(17 * i + j) % h.TINY_VOCAB for j in range(PROMPT_LEN)] for i in range(NUM_LONG)]
    references = [h.greedy_reference(args, p, MAX_TOKENS) for p in prompts]
    server = h.Server(args, ["--max-running", "1", "--drain-timeout-s", str(DRAIN_TIMEOUT_S)],
                      name="drain")
    with server:
        results = [None] * NUM_LONG
        threads, first_token = start_long_requests(server, prompts, results)
        h.check(first_token.wait(60), "no token within 60 s")
        running, waiting = wait_in_system(server, NUM_LONG)
        h.log(f"{running:.0f} running, {waiting:.0f} waiting; SIGTERM")
        server.signal_coordinator(signal.SIGTERM)
        signalled = time.monotonic()
        # The signal is noticed asynchronously (a request that slips in just
        # before is accepted and must complete like the others); /ready says
        # when draining began.
        while True:
            try:
                ready = h.http_request(server.port, "GET", "/ready", timeout=10).status
            except OSError as e:
                raise h.TestFailure(f"GET /ready right after SIGTERM: {e!r}")
            if ready != 200:
                break
            h.check(time.monotonic() - signalled < NOTICE_S,
                    f"GET /ready still 200 {NOTICE_S} s after SIGTERM")
            time.sleep(0.005)
        h.check(ready == 503, f"GET /ready while draining: {ready}, expected 503")
        h.log(f"draining (/ready 503) {1e3 * (time.monotonic() - signalled):.0f} ms after SIGTERM")
        h.check(any(t.is_alive() for t in threads),
                "the long requests ended before draining began: make them longer")

        # Probe until every long request is over; a 503 is only proof of
        # draining if a long request was still streaming when it came.
        kinds = {"503": 0, "refused": 0}
        ready_codes = set()
        while any(t.is_alive() for t in threads):
            kind, detail = probe(server)
            still_streaming = any(t.is_alive() for t in threads)
            if kind == "other":
                raise h.TestFailure(f"a new request while draining: expected 503, got {detail}")
            if kind == "refused" and still_streaming and server.running():
                # On a loaded machine a client thread can still be reading the
                # end of a stream that the server has already finished (it
                # then closes its listener): only streams that go on well
                # after the refusal prove the listener closed too early.
                lag_end = time.monotonic() + CLIENT_LAG_S
                while any(t.is_alive() for t in threads) and time.monotonic() < lag_end:
                    time.sleep(0.01)
                if any(t.is_alive() for t in threads):
                    raise h.TestFailure("a new request while draining (accepted requests still "
                                        f"streaming {CLIENT_LAG_S} s later, process running): "
                                        "connection refused, expected 503")
            kinds[kind] += 1
            try:
                ready_codes.add(h.http_request(server.port, "GET", "/ready", timeout=10).status)
            except OSError:
                pass
            time.sleep(0.02)
        h.log(f"probes while draining: {kinds}; /ready answered {sorted(ready_codes)}")
        h.check(kinds["503"] > 0, "no new request got 503 while draining (they all came after "
                "the long requests ended: make the requests longer)")
        h.check(200 not in ready_codes, f"GET /ready answered 200 while draining")

        for i, r in enumerate(results):
            h.check(not isinstance(r, Exception), f"long request {i}: {r!r}")
            h.check(r.status == 200 and r.done and not r.error_event and
                    r.token_ids == references[i] and r.finish_reason == "length",
                    f"long request {i}, accepted before SIGTERM: expected all {MAX_TOKENS} ids "
                    f"and finish_reason 'length', got {r.describe()}")
        code = server.wait(DRAIN_TIMEOUT_S + EXIT_SLACK_S - (time.monotonic() - signalled))
        h.check(code is not None, f"still running {DRAIN_TIMEOUT_S + EXIT_SLACK_S} s after "
                f"SIGTERM with --drain-timeout-s {DRAIN_TIMEOUT_S}\n{server.log_tail()}")
        h.check(code == 0, f"exit code {code} after a complete drain, expected 0\n"
                f"{server.log_tail()}")
        h.log(f"exited 0 {time.monotonic() - signalled:.2f} s after SIGTERM")
        kind, detail = probe(server)
        h.check(kind == "refused", f"a request after exit: {kind} {detail}")
        server.stop()  # checks that nothing is left behind


def drain_timeout(args):
    """More work than --drain-timeout-s 1 allows: the server gives up on it."""
    num_requests = 8
    prompts = [[(31 * i + j) % h.TINY_VOCAB for j in range(PROMPT_LEN)]
               for i in range(num_requests)]
    server = h.Server(args, ["--max-running", "1", "--drain-timeout-s", "1"],
                      name="drain-timeout")
    with server:
        results = [None] * num_requests
        threads, first_token = start_long_requests(server, prompts, results)
        h.check(first_token.wait(60), "no token within 60 s")
        wait_in_system(server, num_requests)
        server.signal_coordinator(signal.SIGTERM)
        signalled = time.monotonic()
        code = server.wait(1 + EXIT_SLACK_S)
        elapsed = time.monotonic() - signalled
        h.check(code is not None, f"still running {1 + EXIT_SLACK_S} s after SIGTERM with "
                f"--drain-timeout-s 1\n{server.log_tail()}")
        for t in threads:
            t.join(timeout=30)
        h.check(not any(t.is_alive() for t in threads),
                "a client still hangs on its stream after the server exited")
        complete = sum(1 for r in results
                       if not isinstance(r, Exception) and r.done and not r.error_event and
                       len(r.token_ids) == MAX_TOKENS)
        h.log(f"--drain-timeout-s 1: exit code {code} after {elapsed:.2f} s, "
              f"{complete} of {num_requests} requests complete")
        if complete == num_requests:
            h.log("every request finished within the 1 s drain: nothing was cut")
        # A request cut by the drain timeout must say so: a 503 before its
        # stream began, or an error event (then [DONE]) inside it; never a
        # stream that just stops, which a client cannot tell from success.
        for i, r in enumerate(results):
            if isinstance(r, Exception):
                raise h.TestFailure(f"request {i} cut by the drain timeout: {r!r}")
            if r.status == 200 and r.done and not r.error_event and \
                    len(r.token_ids) == MAX_TOKENS:
                continue
            h.check(r.status == 503 or (r.status == 200 and r.error_event is not None),
                    f"request {i} cut by the drain timeout: expected a 503 or an error event, "
                    f"got {r.describe()}")
        server.stop(expect_code=None)


def test(args):
    graceful_drain(args)
    drain_timeout(args)


if __name__ == "__main__":
    h.run_test(test, __doc__)
