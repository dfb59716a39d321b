#!/usr/bin/env python3
"""herd serve refuses bad requests with the right 4xx and an OpenAI error body
{"error": {"message", "type", "param", "code"}}: malformed JSON, wrong types,
values out of range, a body over --max-body-bytes (413), ids outside the
vocabulary, prompt + max_tokens beyond --max-context-tokens, a wrong or
missing API key (401, server started with --api-key), another model's name
(404), and chat on a model without a tokenizer. After each the server still
answers, and at the end a good request completes with the right ids.
"""

import http.client
import json

import serve_harness as h

API_KEY = "sk-herd-test-key"
MAX_BODY_BYTES = 65536
MAX_CONTEXT = 256
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def body(**fields):
    b = {"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}
    b.update(fields)
    return {k: v for k, v in b.items() if v is not _DROP}


_DROP = object()

# (what, path, body, expected status, expected error.param or None). Bodies
# that are str/bytes are sent as they are.
CASES = [
    ("malformed JSON", "/v1/completions", '{"prompt": [1, 2,', 400, None),
    ("JSON not an object", "/v1/completions", "[1, 2, 3]", 400, None),
    ("empty body", "/v1/completions", "", 400, None),
    ("trailing garbage", "/v1/completions", '{"prompt": [1], "max_tokens": 2} xyz', 400, None),
    ("invalid UTF-8", "/v1/completions", b'{"prompt": "\xff\xfe", "max_tokens": 2}', 400, None),
    ("no prompt", "/v1/completions", body(prompt=_DROP), 400, "prompt"),
    ("prompt a number", "/v1/completions", body(prompt=5), 400, "prompt"),
    ("prompt ids mixed with a string", "/v1/completions", body(prompt=[1, "a"]), 400, "prompt"),
    ("prompt id a float", "/v1/completions", body(prompt=[1, 2.5]), 400, "prompt"),
    ("prompt id true", "/v1/completions", body(prompt=[1, True]), 400, "prompt"),
    ("empty prompt", "/v1/completions", body(prompt=[]), 400, "prompt"),
    ("prompt a string (no tokenizer)", "/v1/completions", body(prompt="hello"), 400, "prompt"),
    ("max_tokens a string", "/v1/completions", body(max_tokens="ten"), 400, "max_tokens"),
    ("max_tokens a float", "/v1/completions", body(max_tokens=4.5), 400, "max_tokens"),
    ("max_tokens 0", "/v1/completions", body(max_tokens=0), 400, "max_tokens"),
    ("max_tokens -1", "/v1/completions", body(max_tokens=-1), 400, "max_tokens"),
    ("max_tokens 2^64", "/v1/completions", body(max_tokens=2 ** 64), 400, "max_tokens"),
    ("temperature a string", "/v1/completions", body(temperature="hot"), 400, "temperature"),
    ("temperature -1", "/v1/completions", body(temperature=-1), 400, "temperature"),
    ("temperature 3", "/v1/completions", body(temperature=3), 400, "temperature"),
    ("top_p 0", "/v1/completions", body(top_p=0), 400, "top_p"),
    ("top_p 1.5", "/v1/completions", body(top_p=1.5), 400, "top_p"),
    ("stream a string", "/v1/completions", body(stream="yes"), 400, "stream"),
    ("n 0", "/v1/completions", body(n=0), 400, "n"),
    ("n 129", "/v1/completions", body(n=129), 400, "n"),
    ("best_of other than n", "/v1/completions", body(n=2, best_of=3), 400, "best_of"),
    ("a batch with an empty prompt", "/v1/completions", body(prompt=[[1, 2], []]), 400,
     "prompt"),
    ("a batch with an id = vocab", "/v1/completions", body(prompt=[[1], [h.TINY_VOCAB]]), 400,
     "prompt"),
    ("stop an object", "/v1/completions", body(stop={"a": 1}), 400, "stop"),
    ("id = vocab", "/v1/completions", body(prompt=[1, h.TINY_VOCAB]), 400, "prompt"),
    ("id -1", "/v1/completions", body(prompt=[-1]), 400, "prompt"),
    ("id 2^31", "/v1/completions", body(prompt=[2 ** 31]), 400, "prompt"),
    ("id 2^64", "/v1/completions", body(prompt=[2 ** 64]), 400, "prompt"),
    ("stop_token_ids id = vocab", "/v1/completions", body(stop_token_ids=[h.TINY_VOCAB]), 400,
     "stop_token_ids"),
    ("prompt + max_tokens > context", "/v1/completions",
     body(prompt=[5] * 200, max_tokens=MAX_CONTEXT - 200 + 1), 400, None),
    ("prompt alone > context", "/v1/completions",
     body(prompt=[5] * (MAX_CONTEXT + 1), max_tokens=1), 400, None),
    ("another model", "/v1/completions", body(model="gpt-4"), 404, "model"),
    ("chat without a tokenizer", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, 400, None),
    ("chat messages not a list", "/v1/chat/completions", {"messages": "hi"}, 400, None),
    ("chat with malformed JSON", "/v1/chat/completions", "{", 400, None),
    ("tokenize without a tokenizer", "/tokenize", {"prompt": "hi"}, 400, None),
    ("tokenize with malformed JSON", "/tokenize", "{", 400, None),
    ("detokenize without a tokenizer", "/detokenize", {"tokens": [5]}, 400, None),
]


def expect(server, what, method, path, payload, status, param=None, headers=None):
    headers = AUTH if headers is None else headers
    try:
        r = h.http_request(server.port, method, path, payload, headers=headers, timeout=30)
    except OSError as e:
        raise h.TestFailure(f"{what}: {method} {path} {str(payload)[:200]}: no response ({e!r})"
                            f"\n{server.log_tail()}")
    err = h.check_error_json(r, status, f"{what} ({method} {path} {str(payload)[:200]})")
    if param is not None:
        h.check(err.get("param") == param,
                f"{what}: error.param {err.get('param')!r}, expected {param!r} ({err})")
    if status == 401:
        h.check(err.get("code") == "invalid_api_key",
                f"{what}: error.code {err.get('code')!r}, expected 'invalid_api_key'")
    h.check(server.running(), f"herd serve died after {what}\n{server.log_tail()}")


def send_chunked(port, path, chunks, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=iter(chunks),
                     headers=dict(headers, **{"Content-Type": "application/json"}),
                     encode_chunked=True)
        resp = conn.getresponse()
        return h.Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def test(args):
    extra = ["--api-key", API_KEY, "--max-body-bytes", str(MAX_BODY_BYTES),
             "--max-context-tokens", str(MAX_CONTEXT)]
    with h.Server(args, extra) as server:
        for what, path, payload, status, param in CASES:
            expect(server, what, "POST", path, payload, status, param)

        # The context limit is inclusive: prompt + max_tokens == context runs.
        r = h.http_request(server.port, "POST", "/v1/completions",
                           body(prompt=[5] * 200, max_tokens=MAX_CONTEXT - 200), headers=AUTH)
        h.check(r.status == 200 and
                len(r.json()["choices"][0].get("token_ids", [])) == MAX_CONTEXT - 200,
                f"prompt 200 + max_tokens {MAX_CONTEXT - 200} == --max-context-tokens "
                f"{MAX_CONTEXT}: expected 200 with {MAX_CONTEXT - 200} ids, got {r!r}")

        # Bodies over --max-body-bytes: with Content-Length, and chunked.
        big = json.dumps(body()) + " " * MAX_BODY_BYTES
        expect(server, f"a {len(big)}-byte body (limit {MAX_BODY_BYTES})", "POST",
               "/v1/completions", big, 413)
        r = send_chunked(server.port, "/v1/completions",
                         [b"{" + b" " * 8192] * (MAX_BODY_BYTES // 8192 + 2) + [b"}"], AUTH)
        h.check_error_json(r, 413, f"a chunked body over {MAX_BODY_BYTES} bytes")
        h.check(server.running(), f"herd serve died after a big chunked body\n{server.log_tail()}")

        # API keys: wrong, missing, another scheme; on every /v1 endpoint.
        good = body()
        for what, headers in [("a wrong API key", {"Authorization": "Bearer sk-wrong"}),
                              ("no API key", {}),
                              ("the key as Basic auth", {"Authorization": f"Basic {API_KEY}"}),
                              ("the key with a suffix", {"Authorization": f"Bearer {API_KEY}x"})]:
            expect(server, what, "POST", "/v1/completions", good, 401, headers=headers)
            expect(server, f"{what} (chat)", "POST", "/v1/chat/completions",
                   {"messages": [{"role": "user", "content": "hi"}]}, 401, headers=headers)
            expect(server, f"{what} (models)", "GET", "/v1/models", None, 401, headers=headers)

        # The probes and /metrics stay open without the key (kubelet, Prometheus).
        for path in ("/health", "/ready", "/metrics"):
            r = h.http_request(server.port, "GET", path)
            h.check(r.status == 200, f"GET {path} without the API key: {r!r}, expected 200")

        # Unknown paths and methods.
        expect(server, "an unknown path", "POST", "/v1/nothing", good, 404)
        expect(server, "GET on /v1/completions", "GET", "/v1/completions", None, 405)

        # After all that, a good request still works, streamed and not.
        h.good_request_works(server, headers=AUTH, what="a good request after the bad ones")
        result = h.stream_completion(server.port, h.completion_body([5, 17, 42, 99], 8, stream=True),
                                     headers=AUTH)
        expected = h.greedy_reference(args, [5, 17, 42, 99], 8)
        h.check(result.status == 200 and result.done and result.token_ids == expected,
                f"a good streamed request after the bad ones: expected {expected}, got "
                f"{result.describe()}")


if __name__ == "__main__":
    h.run_test(test, __doc__)
