#!/usr/bin/env python3
"""herd serve under a few thousand random and mutated requests (fixed seed):
random JSON shapes, valid bodies with fields deleted, retyped or pushed out
of range, random bytes, truncated bodies, deeply nested JSON, odd headers,
random paths and methods, raw garbage on the socket, and clients that go
away in the middle of a long request. No answer may be a 5xx, a well-formed
HTTP request must get an answer, a 200 must be a complete completion, the
server must never crash or hang; afterwards it returns to idle (no request
running or waiting, no KV cache block in use) and a valid request still
completes correctly.

A failure prints the case number, kind and bytes; rerun with the same --seed
to get the same cases.
"""

import http.client
import json
import random
import socket
import time

import serve_harness as h

NUM_CASES = 3000
NUM_THREADS = 4
API_PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize",
             "/detokenize", "/health", "/ready", "/metrics"]
FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stop_token_ids",
          "ignore_eos", "stream", "stream_options", "model", "n", "best_of", "echo", "logprobs",
          "suffix", "logit_bias", "presence_penalty", "frequency_penalty", "user", "messages",
          "max_completion_tokens", "response_format", "top_k", "min_p", "tokens", "guided_json",
          "guided_regex", "guided_choice", "guided_whitespace_pattern", "tools", "tool_choice",
          "parallel_tool_calls"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
INTERESTING_NUMBERS = [0, 1, -1, 2, 15, 16, 17, 511, 512, 2047, 2048, 2049, 2 ** 31 - 1, 2 ** 31,
                       2 ** 32, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -2 ** 63, -2 ** 64,
                       1e308, -1e308, 1e-320, 0.5, 1.0, -0.0, 3.5]


def random_string(rng, max_len=40):
    alphabet = "abc xyz\"\\/\n\t\u00e9\u4e2d\U0001f600{}[]:,0"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(max_len)))


def random_json(rng, depth=0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(INTERESTING_NUMBERS)
    if kind == 3:
        return rng.randrange(-1000, 3000)
    if kind == 4:
        return rng.uniform(-10, 10)
    if kind == 5:
        return random_string(rng)
    if kind in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(6))]
    keys = FIELDS + ["role", "content", "type", "text", "include_usage"]
    return {rng.choice(keys) if rng.random() < 0.7 else random_string(rng, 10):
            random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def valid_body(rng):
    body = {"prompt": [rng.randrange(h.TINY_VOCAB) for _ in range(rng.randrange(1, 40))],
            "max_tokens": rng.randrange(1, 12), "temperature": rng.choice([0, 0, 0.7, 1.5])}
    if rng.random() < 0.3:
        body["stream"] = True
    if rng.random() < 0.2:
        body["seed"] = rng.randrange(2 ** 32)
    if rng.random() < 0.2:
        body["stop_token_ids"] = [rng.randrange(h.TINY_VOCAB) for _ in range(rng.randrange(3))]
    if rng.random() < 0.1:
        body["n"] = rng.randrange(1, 4)
    if rng.random() < 0.1:  # a batch of prompts
        body["prompt"] = [body["prompt"], [rng.randrange(h.TINY_VOCAB)
                                           for _ in range(rng.randrange(1, 20))]]
    return body


def mutate(rng, body):
    body = json.loads(json.dumps(body))
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(8)
        if op == 0 and body:
            del body[rng.choice(list(body))]
        elif op == 1:
            body[rng.choice(FIELDS)] = random_json(rng)
        elif op == 2:
            body[rng.choice(["max_tokens", "temperature", "top_p", "seed", "n"])] = \
                rng.choice(INTERESTING_NUMBERS)
        elif op == 3 and isinstance(body.get("prompt"), list):
            prompt = body["prompt"]
            prompt.insert(rng.randrange(len(prompt) + 1),
                          rng.choice([h.TINY_VOCAB, -1, 2 ** 31, 1.5, "x", None, [1], True]))
        elif op == 4:
            body["prompt"] = [rng.randrange(h.TINY_VOCAB)
                              for _ in range(rng.choice([0, 1, 2000, 2048, 2049, 3000]))]
        elif op == 5:
            body["stream"] = True
            body["stream_options"] = rng.choice([{"include_usage": True}, None, 5, {"x": []}])
        elif op == 6:
            body[random_string(rng, 12)] = random_json(rng)
        else:
            body["stop"] = rng.choice([random_string(rng), [random_string(rng), 3], [], None,
                                       [rng.randrange(h.TINY_VOCAB)] * 3, 7])
    return body


def nested(rng):
    depth = rng.choice([100, 1000, 10000, 30000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    inner = opener * depth + "1" + closer * depth
    return rng.choice([inner, '{"prompt": ' + inner + ', "max_tokens": 2}'])


def make_case(rng):
    """(kind, method, path, headers, body bytes or None) or ("raw", bytes)."""
    r = rng.random()
    headers = {"Content-Type": "application/json"}
    if r < 0.15:
        return ("random_json", "POST", rng.choice(API_PATHS[:2]), headers,
                json.dumps(random_json(rng)).encode())
    if r < 0.50:
        path = "/v1/completions" if rng.random() < 0.85 else "/v1/chat/completions"
        return ("mutated", "POST", path, headers, json.dumps(mutate(rng, valid_body(rng))).encode())
    if r < 0.58:
        return ("random_bytes", "POST", rng.choice(API_PATHS[:2]), headers,
                bytes(rng.randrange(256) for _ in range(rng.randrange(2000))))
    if r < 0.68:
        text = json.dumps(valid_body(rng)).encode()
        return ("truncated", "POST", "/v1/completions", headers, text[:rng.randrange(len(text))])
    if r < 0.71:
        return ("nested", "POST", "/v1/completions", headers, nested(rng).encode())
    if r < 0.80:
        method = rng.choice(METHODS)
        path = rng.choice(API_PATHS + ["/", "/v1", "/v1/", "/v1/completions/", "/v2/completions",
                                       "/v1/completions?stream=true", "/%00", "/../etc/passwd",
                                       "/" + "a" * rng.randrange(1, 5000),
                                       "/v1/" + random_string(rng, 20).replace(" ", "%20")])
        path = "".join(c if 32 < ord(c) < 127 else "%%%02X" % (ord(c) & 0xff) for c in path)
        body = json.dumps(valid_body(rng)).encode() if rng.random() < 0.5 else None
        return ("path_method", method, path, headers if body else {}, body)
    if r < 0.88:
        body = json.dumps(valid_body(rng)).encode()
        headers = rng.choice([
            {"Content-Type": random_string(rng, 30).encode("ascii", "replace").decode()
                .replace("\n", " ").replace("\t", " ") or "x"},
            {"Content-Type": "text/plain"},
            {"Content-Type": "application/json", "Authorization": "Bearer " + "x" * 5000},
            {"Content-Type": "application/json", "Accept": "text/event-stream"},
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            {"Content-Type": "application/json", "Expect": "100-continue"},
            {"Content-Type": "application/json", "X-" + "y" * 100: "z" * 1000},
        ])
        return ("headers", "POST", "/v1/completions", headers, body)
    if r < 0.91:
        body = valid_body(rng)
        body["max_tokens"] = rng.choice([200, 1000])
        body["stream"] = rng.random() < 0.7
        return ("abandon", json.dumps(body).encode(), rng.randrange(0, 300))
    return ("raw", raw_request(rng))


def raw_request(rng):
    body = json.dumps(valid_body(rng)).encode()
    choice = rng.randrange(8)
    if choice == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
    if choice == 1:  # Content-Length larger than the body, then EOF
        return (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % (len(body) + rng.randrange(1, 1000))) + body
    if choice == 2:  # a bad Content-Length
        cl = rng.choice([b"-1", b"abc", b"99999999999999999999", b"1, 2", b""])
        return b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + cl + \
            b"\r\n\r\n" + body
    if choice == 3:  # bad chunked encoding
        chunk = rng.choice([b"zz\r\n", b"ffffffffffffffff\r\n", b"5\r\nab", b"-1\r\n\r\n"])
        return (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\n\r\n" + chunk)
    if choice == 4:  # a mangled request line
        line = rng.choice([b"POST", b"POST /v1/completions", b"POST /v1/completions HTTP/9.9",
                           b"\x00\x01\x02 / HTTP/1.1", b"GET " + b"/" * 20000 + b" HTTP/1.1",
                           b"POST /v1/completions HTTP/1.1 extra"])
        return line + b"\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    if choice == 5:  # a header line without a colon, or very many headers
        if rng.random() < 0.5:
            headers = b"Bad header line\r\n"
        else:
            headers = b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(rng.choice([100, 1000])))
        return (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + headers +
                b"Content-Length: %d\r\n\r\n" % len(body) + body)
    if choice == 6:  # two pipelined requests, the second truncated
        one = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return one + one[:rng.randrange(len(one))]
    data = bytearray(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
    for _ in range(rng.randrange(1, 6)):  # flipped bytes anywhere
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def send_raw(port, data):
    """The status codes of the responses to raw bytes (the write side is then
    closed); [] when the server closed without answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close early on garbage
        received = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            received += chunk
    codes = []
    for line in received.split(b"\r\n"):
        if line.startswith(b"HTTP/1."):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                codes.append(int(parts[1]))
    return codes


def abandon(port, body, num_bytes):
    """A client that goes away: sends a long request, reads num_bytes of the
    answer (0: none) and closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        received = b""
        while len(received) < num_bytes:
            chunk = s.recv(num_bytes - len(received))
            if not chunk:
                break
            received += chunk
    return "gone"


def read_stream(resp):
    text = resp.read().decode(errors="replace")
    events = [e for e in text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    return events


def run_case(port, idx, case):
    """(status or "none", None when the answer is acceptable, else what was
    wrong)."""
    if case[0] == "abandon":
        return abandon(port, case[1], case[2]), None
    if case[0] == "raw":
        codes = send_raw(port, case[1])
        bad = [c for c in codes if c >= 500]
        return (codes[0] if codes else "none"), (f"raw bytes answered {bad}" if bad else None)
    kind, method, path, headers, body = case
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            return "none", f"no response: {e!r}"
        status = resp.status
        if status >= 500:
            return status, f"HTTP {status}: {resp.read()[:300]!r}"
        if status != 200 or method == "HEAD" or not path.startswith("/v1/"):
            resp.read()
            return status, None
        if "event-stream" in (resp.getheader("Content-Type") or ""):
            events = read_stream(resp)
            if not events or events[-1].strip() != "data: [DONE]":
                return status, f"HTTP 200 stream without a final [DONE]: {events[-3:]}"
            if any('"error"' in e for e in events):
                return status, f"HTTP 200 stream with an error event: {events[-3:]}"
            return "200 stream", None
        data = resp.read()
        try:
            json.loads(data)
        except ValueError:
            return status, f"HTTP 200 with a body that is not JSON: {data[:300]!r}"
        return status, None
    except (OSError, http.client.HTTPException) as e:
        return "cut", f"response cut short: {e!r}"
    finally:
        conn.close()


def describe(idx, case):
    if case[0] == "raw":
        return f"case {idx} raw: {case[1][:300]!r}"
    if case[0] == "abandon":
        return f"case {idx} abandon after {case[2]} bytes: {case[1][:300]!r}"
    kind, method, path, headers, body = case
    return f"case {idx} {kind}: {method} {path[:100]} {headers} {(body or b'')[:300]!r}"


def test(args):
    rng = random.Random(args.seed)
    cases = [make_case(rng) for _ in range(NUM_CASES)]
    kinds = {}
    for case in cases:
        kinds[case[0]] = kinds.get(case[0], 0) + 1
    h.log(f"{NUM_CASES} cases (seed {args.seed}): {kinds}")
    with h.Server(args) as server:
        failures = []
        statuses = {}
        start = time.monotonic()
        for batch_start in range(0, NUM_CASES, 500):
            batch = list(range(batch_start, min(NUM_CASES, batch_start + 500)))
            results = h.run_parallel(lambda i: run_case(server.port, i, cases[i]), batch,
                                     num_threads=NUM_THREADS)
            for i, result in zip(batch, results):
                if isinstance(result, Exception):
                    failures.append(f"{describe(i, cases[i])}\n    -> the client failed: "
                                    f"{result!r}")
                    continue
                status, problem = result
                key = f"{cases[i][0]} {status}"
                statuses[key] = statuses.get(key, 0) + 1
                if problem is not None:
                    failures.append(f"{describe(i, cases[i])}\n    -> {problem}")
            if not server.running():
                raise h.TestFailure(f"herd serve died during cases {batch[0]}..{batch[-1]}; "
                                    f"failures so far:\n" + "\n".join(failures[:10]) +
                                    f"\n{server.log_tail()}")
            h.assert_alive(server, f"cases {batch[0]}..{batch[-1]}")
        h.log(f"{NUM_CASES} cases in {time.monotonic() - start:.1f} s, {len(failures)} failures; "
              f"answers by kind: {dict(sorted(statuses.items()))}")
        h.check(not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:15]))
        h.wait_idle(server, "the fuzz")
        h.good_request_works(server, what="a valid request after the fuzz")


if __name__ == "__main__":
    h.run_test(test, __doc__)
