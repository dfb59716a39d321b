#!/usr/bin/env python3
"""herd serve under concurrent load: 64 streaming clients, released together,
ask for greedy completions of 8 different prompts (8 clients each, prompts of
1 to 100 ids), then each at once for another, so that requests arrive while
others stream and finish. Every stream must complete ([DONE], finish_reason
"length") and carry exactly the ids `herd generate` produces for its prompt,
however the server batched, chunked and interleaved them.
"""

import random
import threading

import serve_harness as h

NUM_CLIENTS = 64
REQUESTS_PER_CLIENT = 2
PROMPT_LENGTHS = [1, 3, 8, 16, 17, 33, 64, 100]  # around the 16-token KV blocks
MAX_TOKENS = 24


def check_stream_shape(result, what):
    """Every chunk is a text_completion of one id and one choice."""
    ids = {e.get("id") for e in result.events}
    h.check(len(ids) == 1 and None not in ids, f"{what}: chunk ids {ids}, expected one id")
    for event in result.events:
        h.check(event.get("object") == "text_completion",
                f"{what}: chunk object {event.get('object')!r}, expected 'text_completion'")
        choices = event.get("choices")
        if choices == [] and event.get("usage"):
            continue  # the usage chunk
        h.check(isinstance(choices, list) and len(choices) == 1 and
                choices[0].get("index") == 0, f"{what}: chunk choices {choices}")


def test(args):
    rng = random.Random(args.seed)
    prompts = [h.random_prompt(rng, n) for n in PROMPT_LENGTHS]
    references = [h.greedy_reference(args, p, MAX_TOKENS) for p in prompts]

    with h.Server(args) as server:
        models = h.http_request(server.port, "GET", "/v1/models")
        h.check(models.status == 200, f"GET /v1/models: {models!r}")
        data = models.json().get("data")
        h.check(isinstance(data, list) and len(data) == 1 and data[0].get("id"),
                f"GET /v1/models: expected one model, got {models.json()}")

        barrier = threading.Barrier(NUM_CLIENTS)

        def prompt_of(i, k):
            return (i + k * 3) % len(prompts)

        def client(i):
            barrier.wait(timeout=60)
            results = []
            for k in range(REQUESTS_PER_CLIENT):
                body = h.completion_body(prompts[prompt_of(i, k)], MAX_TOKENS, stream=True)
                try:
                    results.append(h.stream_completion(server.port, body, timeout=120))
                except OSError as e:
                    results.append(e)
            return results

        h.log(f"{NUM_CLIENTS} streaming clients x {REQUESTS_PER_CLIENT} requests, "
              f"{len(prompts)} prompts, {MAX_TOKENS} tokens each")
        per_client = h.run_parallel(client, list(range(NUM_CLIENTS)))
        failures = []
        outcomes = []
        for i, client_results in enumerate(per_client):
            if isinstance(client_results, Exception):
                failures.append(f"client {i}: {client_results!r}")
                continue
            outcomes += [(i, k, r) for k, r in enumerate(client_results)]
        for i, k, result in outcomes:
            p = prompt_of(i, k)
            what = f"client {i} request {k} (prompt {p}: {len(prompts[p])} ids)"
            if isinstance(result, Exception):
                failures.append(f"{what}: {result!r}")
                continue
            expected = references[p]
            if (result.status != 200 or not result.done or result.error_event or
                    result.bad_events or result.token_ids != expected or
                    result.finish_reason != "length"):
                failures.append(f"{what}: expected 200 with ids {expected} and finish_reason "
                                f"'length'; got {result.describe()}")
                continue
            try:
                check_stream_shape(result, what)
            except h.TestFailure as e:
                failures.append(str(e))
        h.check(not failures, f"{len(failures)} of {NUM_CLIENTS * REQUESTS_PER_CLIENT} "
                f"requests wrong:\n" + "\n".join(failures[:10]))

        # The same prompts again, not streamed and one after another: the
        # answer does not depend on the company a request keeps.
        for p, prompt in enumerate(prompts):
            response = h.http_request(server.port, "POST", "/v1/completions",
                                      h.completion_body(prompt, MAX_TOKENS))
            h.check(response.status == 200, f"prompt {p} alone: {response!r}")
            body = response.json()
            choice = body["choices"][0]
            h.check(choice.get("token_ids") == references[p],
                    f"prompt {p} alone: token_ids {choice.get('token_ids')}, "
                    f"herd generate gives {references[p]}")
            h.check(choice.get("finish_reason") == "length",
                    f"prompt {p} alone: finish_reason {choice.get('finish_reason')!r}")
            usage = body.get("usage") or {}
            h.check(usage.get("prompt_tokens") == len(prompt) and
                    usage.get("completion_tokens") == MAX_TOKENS,
                    f"prompt {p} alone: usage {usage}, expected {len(prompt)} prompt and "
                    f"{MAX_TOKENS} completion tokens")
        h.assert_alive(server, "the concurrent clients")
        h.wait_idle(server, "the concurrent clients")


if __name__ == "__main__":
    h.run_test(test, __doc__)
