#!/usr/bin/env python3
"""herd serve under overload: with room for one running and two waiting
requests (--max-running 1 --max-waiting 2), bursts of concurrent requests
(half streamed) must be answered, never dropped: some with 429, an OpenAI
error body and a Retry-After of whole seconds, and every one accepted (200)
must complete with all of its tokens, equal to `herd generate`'s.
"""

import threading

import serve_harness as h

BURST = 48
MAX_ROUNDS = 3
MAX_TOKENS = 200
PROMPT = [7, 8, 9, 10, 11, 12, 13, 14]


def one_request(port, stream):
    body = h.completion_body(PROMPT, MAX_TOKENS, stream=stream)
    if stream:
        return h.stream_completion(port, body, timeout=120)
    return h.http_request(port, "POST", "/v1/completions", body, timeout=120)


def test(args):
    reference = h.greedy_reference(args, PROMPT, MAX_TOKENS)
    num_accepted = num_rejected = 0
    with h.Server(args, ["--max-running", "1", "--max-waiting", "2"]) as server:
        for round_idx in range(MAX_ROUNDS):
            barrier = threading.Barrier(BURST)

            def client(i):
                barrier.wait(timeout=60)
                return one_request(server.port, stream=i % 2 == 0)

            results = h.run_parallel(client, list(range(BURST)))
            failures = []
            for i, r in enumerate(results):
                what = f"round {round_idx} request {i} ({'streamed' if i % 2 == 0 else 'plain'})"
                if isinstance(r, Exception):
                    failures.append(f"{what}: no response ({r!r}); expected 200 or 429")
                    continue
                if r.status == 429:
                    num_rejected += 1
                    retry_after = r.headers.get("retry-after")
                    if retry_after is None or not retry_after.strip().isdigit():
                        failures.append(f"{what}: 429 with Retry-After {retry_after!r}, expected "
                                        f"a number of seconds")
                    try:
                        h.check_error_json(h.Response(r.status, r.headers, r.body), 429, what)
                    except h.TestFailure as e:
                        failures.append(str(e))
                    continue
                if r.status != 200:
                    failures.append(f"{what}: expected 200 or 429, got {r!r}")
                    continue
                num_accepted += 1
                if i % 2 == 0:
                    ok = (r.done and not r.error_event and r.token_ids == reference and
                          r.finish_reason == "length")
                    got = r.describe()
                else:
                    choice = r.json()["choices"][0]
                    ok = (choice.get("token_ids") == reference and
                          choice.get("finish_reason") == "length")
                    got = f"token_ids {choice.get('token_ids')}, finish_reason " \
                          f"{choice.get('finish_reason')!r}"
                if not ok:
                    failures.append(f"{what}: accepted, expected all {MAX_TOKENS} ids "
                                    f"{reference[:10]}... and finish_reason 'length', got {got}")
            h.check(not failures, f"{len(failures)} wrong answers:\n" + "\n".join(failures[:10]))
            h.log(f"round {round_idx}: {num_accepted} accepted, {num_rejected} got 429 so far")
            if num_rejected > 0 and num_accepted > 0:
                break
        h.check(num_rejected > 0, f"{MAX_ROUNDS} bursts of {BURST} requests of {MAX_TOKENS} "
                f"tokens with --max-running 1 --max-waiting 2: no 429")
        h.check(num_accepted > 0, "every request got 429: none was accepted")
        # Once the burst is over the queue is empty again.
        h.good_request_works(server, what="a request after the bursts")


if __name__ == "__main__":
    h.run_test(test, __doc__)
