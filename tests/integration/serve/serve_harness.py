"""Shared helpers of the `herd serve` integration tests (python3, stdlib only).

Every test script takes the same arguments (see parse_args), starts its own
`herd serve` on 127.0.0.1 with --port 0 --port-file (alone, or under
`mpirun -np 2` with --mode mpi), waits for GET /ready, talks to it over real
sockets, and stops it with SIGTERM at the end. The processes of a server carry
an environment tag, so that whatever happens (a failed check, an exception,
SIGTERM from ctest) every one of them is found and killed: a test never leaves
processes behind.

Exit codes: 0 pass, 1 fail, 77 skip (ctest's SKIP_RETURN_CODE).
"""

import argparse
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

SKIP = 77
# tests/data/llamacpp-tiny: 512 ids, no tokenizer, context_length 2048.
TINY_VOCAB = 512

_SERVERS = []  # every Server started, for the emergency cleanup
_TEMP_DIRS = []


class TestFailure(Exception):
    """A check failed; the message says what was sent, expected and got."""


class TestSkip(Exception):
    """Something the test needs is missing (exit 77)."""


def check(condition, message):
    if not condition:
        raise TestFailure(message)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--herd", required=True, help="the herd binary")
    parser.add_argument("--model", required=True, help="the GGUF model to serve")
    parser.add_argument("--mode", choices=["single", "mpi", "cuda", "cuda-ep", "cuda-nccl"],
                        default="single",
                        help="one process, mpirun -np 2 (two expert-parallel ranks), one "
                             "process with --device cuda, that with two expert-parallel "
                             "ranks as threads (--local-ranks 2), or one rank whose experts' "
                             "rows go through NCCL to itself (--comm nccl); the cuda modes "
                             "skip without a GPU")
    parser.add_argument("--mpirun", default="mpirun", help="mpirun for --mode mpi")
    parser.add_argument("--prometheus", default="/usr/bin/prometheus",
                        help="the prometheus binary (prometheus test only)")
    parser.add_argument("--kv-cache-type", choices=["f32", "f16"], default="f32",
                        help="the KV cache of the server and of the `herd generate` references")
    parser.add_argument("--seed", type=int, default=1, help="seed of random prompts and fuzz")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (logs)")
    return parser.parse_args(argv)


def make_temp_dir(prefix):
    path = tempfile.mkdtemp(prefix=prefix)
    _TEMP_DIRS.append(path)
    return path


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL when this test process dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tagged_pids(tag):
    """pid -> environ dict of every live process whose environment holds tag."""
    found = {}
    needle = f"HERD_TEST_TAG={tag}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        entries = raw.split(b"\0")
        if needle not in entries:
            continue
        env = {}
        for entry in entries:
            key, _, value = entry.partition(b"=")
            env[key.decode(errors="replace")] = value.decode(errors="replace")
        found[int(name)] = env
    return found


def _pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- HTTP


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body  # bytes

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"HTTP {self.status} {self.body[:300]!r}"


def http_request(port, method, path, body=None, headers=None, timeout=60, host="127.0.0.1"):
    """One request on a fresh connection. Raises OSError (ConnectionRefusedError,
    ConnectionResetError, socket.timeout...) when no response came."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        all_headers = {}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


class StreamResult:
    """What a streamed completion returned."""

    def __init__(self):
        self.status = 0
        self.headers = {}
        self.body = b""  # the body of a non-stream (error) response
        self.token_ids = []
        self.finish_reason = None
        self.done = False  # saw data: [DONE]
        self.error_event = None  # {"error": ...} sent inside the stream
        self.events = []  # parsed JSON of every data event but [DONE]
        self.bad_events = []  # data that was not JSON
        self.first_token_time = None  # time.monotonic() of the first token
        self.end_time = None

    def describe(self):
        return (f"HTTP {self.status}, {len(self.token_ids)} token ids {self.token_ids[:40]}, "
                f"finish_reason {self.finish_reason!r}, [DONE] {self.done}, "
                f"error event {self.error_event}, body {self.body[:300]!r}")


def stream_completion(port, body, headers=None, timeout=120, on_first_token=None):
    """POSTs a streaming /v1/completions and reads its server-sent events to
    the end. Raises OSError when no response came at all; a stream cut short
    shows as done == False."""
    result = StreamResult()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        all_headers = {"Content-Type": "application/json"}
        all_headers.update(headers or {})
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers=all_headers)
        resp = conn.getresponse()
        result.status = resp.status
        result.headers = {k.lower(): v for k, v in resp.getheaders()}
        if resp.status != 200 or not result.headers.get("content-type", "").startswith(
                "text/event-stream"):
            result.body = resp.read()
            result.end_time = time.monotonic()
            return result
        data_lines = []
        try:
            while True:
                line = resp.readline()
                if not line:
                    break
                line = line.rstrip(b"\r\n")
                if line:
                    if line.startswith(b"data:"):
                        data_lines.append(line[5:].lstrip(b" "))
                    continue
                if not data_lines:
                    continue
                data = b"\n".join(data_lines)
                data_lines = []
                if data == b"[DONE]":
                    result.done = True
                    continue
                try:
                    event = json.loads(data)
                except ValueError:
                    result.bad_events.append(data)
                    continue
                result.events.append(event)
                if isinstance(event, dict) and "error" in event:
                    result.error_event = event["error"]
                    continue
                for choice in event.get("choices") or []:
                    ids = choice.get("token_ids") or []
                    if ids and result.first_token_time is None:
                        result.first_token_time = time.monotonic()
                        if on_first_token:
                            on_first_token()
                    result.token_ids.extend(ids)
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
        except (OSError, http.client.HTTPException):
            pass  # cut short: done stays False
        result.end_time = time.monotonic()
        return result
    finally:
        conn.close()


def completion_body(prompt, max_tokens, stream=False, **extra):
    body = {"prompt": list(prompt), "max_tokens": max_tokens, "temperature": 0,
            "stream": stream}
    body.update(extra)
    return body


def check_error_json(response, expected_status, what):
    """The response has expected_status (an int or a set) and an OpenAI error
    body {"error": {"message", "type", "param", "code"}}."""
    allowed = expected_status if isinstance(expected_status, (set, frozenset)) else {
        expected_status}
    check(response.status in allowed,
          f"{what}: expected HTTP {sorted(allowed)}, got {response!r}")
    try:
        body = response.json()
    except ValueError:
        raise TestFailure(f"{what}: HTTP {response.status} body is not JSON: "
                          f"{response.body[:300]!r}")
    err = body.get("error") if isinstance(body, dict) else None
    check(isinstance(err, dict), f"{what}: no 'error' object in {body}")
    check(isinstance(err.get("message"), str) and err["message"],
          f"{what}: error.message missing or empty in {body}")
    check(isinstance(err.get("type"), str) and err["type"], f"{what}: error.type missing in {body}")
    for key in ("param", "code"):
        check(key in err and (err[key] is None or isinstance(err[key], str)),
              f"{what}: error.{key} must be present, a string or null, in {body}")
    return err


def parse_metrics(text):
    """Prometheus text format -> {(name, ((label, value), ...)): float}."""
    samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            label_text, _, value_text = rest.rpartition("}")
            labels = []
            for part in _split_labels(label_text):
                key, _, value = part.partition("=")
                labels.append((key.strip(), value.strip().strip('"')))
            value_text = value_text.split()[0]
        else:
            name, value_text = line.split()[:2]
            labels = []
        samples[(name, tuple(sorted(labels)))] = float(value_text)
    return samples


def _split_labels(text):
    parts, current, quoted, escaped = [], "", False, False
    for c in text:
        if escaped:
            current += c
            escaped = False
        elif c == "\\":
            current += c
            escaped = True
        elif c == '"':
            current += c
            quoted = not quoted
        elif c == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += c
    if current.strip():
        parts.append(current)
    return parts


def metric_sum(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`; None when
    there is no such series."""
    total, found = 0.0, False
    for (sample_name, sample_labels), value in samples.items():
        if sample_name != name:
            continue
        if any(dict(sample_labels).get(k) != v for k, v in labels.items()):
            continue
        total += value
        found = True
    return total if found else None


def scrape(port):
    response = http_request(port, "GET", "/metrics", timeout=30)
    check(response.status == 200, f"GET /metrics: {response!r}")
    return parse_metrics(response.body.decode())


def random_prompt(rng, length, vocab=TINY_VOCAB):
    return [rng.randrange(vocab) for _ in range(length)]


# ---------------------------------------------------------------- herd generate

_REFERENCE_CACHE = {}


def greedy_reference(args, prompt, max_new_tokens):
    """The ids `herd generate` produces greedily for prompt (one process)."""
    key = (tuple(prompt), max_new_tokens)
    if key not in _REFERENCE_CACHE:
        cmd = [args.herd, "generate", "--model", args.model, "--threads", "1",
               "--prompt-ids", ",".join(map(str, prompt)),
               "--max-new-tokens", str(max_new_tokens), "--temperature", "0",
               "--kv-cache-type", args.kv_cache_type]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        check(proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        check(len(lines) == 1, f"herd generate printed {proc.stdout!r}, expected one line of ids")
        _REFERENCE_CACHE[key] = [int(x) for x in lines[0].split(",")]
    return _REFERENCE_CACHE[key]


# ---------------------------------------------------------------- the server

# What `herd serve --device cuda` says on a machine it cannot run on: these
# end a cuda-mode test as skipped, any other failure fails it.
_NO_GPU_MESSAGES = ("--device cuda needs a CUDA GPU", "this herd was built without CUDA",
                    "--comm nccl needs a build with NCCL", "no NVIDIA driver is loaded",
                    "no usable CUDA device", "the driver sees no CUDA device")
CUDA_MODES = ("cuda", "cuda-ep", "cuda-nccl")


class Server:
    """`herd serve` on 127.0.0.1, alone or under mpirun -np 2 (num_ranks). Use
    as a context manager: the exit stops it (SIGTERM, checked to exit 0) unless
    the test already did, and kills whatever is left of it."""

    def __init__(self, args, extra_args=(), env=None, name="serve", num_ranks=2):
        self.args = args
        self.num_ranks = num_ranks
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.name = name
        self.tag = uuid.uuid4().hex
        self.proc = None
        self.port = None
        self.dir = None
        self.log_path = None
        self.exit_code = None

    # Open MPI as the test machine runs it: root allowed, loopback only, and
    # idle ranks yield their core (two ranks share two cores with the tests).
    def _command(self):
        cmd = [self.args.herd, "serve", "--model", self.args.model, "--host", "127.0.0.1",
               "--port", "0", "--port-file", self.port_file, "--threads", "1",
               "--kv-cache-type", self.args.kv_cache_type]
        cmd += self.extra_args
        if self.args.mode in CUDA_MODES:
            cmd += ["--device", "cuda"]
        if self.args.mode == "cuda-ep":
            cmd += ["--local-ranks", "2"]
        if self.args.mode == "cuda-nccl":
            cmd += ["--comm", "nccl"]
        if self.args.mode == "mpi":
            cmd = [self.args.mpirun, "-np", str(self.num_ranks), "--allow-run-as-root",
                   "--oversubscribe",
                   "--mca", "btl", "self,vader,tcp", "--mca", "btl_tcp_if_include", "lo",
                   "--mca", "oob_tcp_if_include", "lo", "--mca", "mpi_yield_when_idle", "1",
                   "-x", "HERD_TEST_TAG"] + cmd
        return cmd

    def start(self, timeout=90):
        self.dir = make_temp_dir(f"herd-{self.name}-")
        self.port_file = os.path.join(self.dir, "port")
        self.log_path = os.path.join(self.dir, "server.log")
        env = dict(os.environ)
        env.update(self.env)
        env["HERD_TEST_TAG"] = self.tag
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        cmd = self._command()
        log(f"starting: {' '.join(cmd)}")
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         preexec_fn=_die_with_parent)
        _SERVERS.append(self)
        deadline = time.monotonic() + timeout
        while self.port is None:
            self._check_running("before writing its port file")
            try:
                with open(self.port_file) as f:
                    text = f.read().strip()
                if text.isdigit():
                    self.port = int(text)
                    break
            except OSError:
                pass
            check(time.monotonic() < deadline,
                  f"no port in {self.port_file} after {timeout} s\n{self.log_tail()}")
            time.sleep(0.05)
        while True:
            self._check_running("before /ready")
            try:
                if http_request(self.port, "GET", "/ready", timeout=5).status == 200:
                    break
            except OSError:
                pass
            check(time.monotonic() < deadline,
                  f"GET /ready not 200 after {timeout} s\n{self.log_tail()}")
            time.sleep(0.05)
        log(f"{self.name}: ready on port {self.port} ({self.args.mode})")
        return self

    def _check_running(self, when):
        code = self.proc.poll()
        if code is None:
            return
        if self.args.mode in CUDA_MODES and any(
                reason in self.log_text() for reason in _NO_GPU_MESSAGES):
            raise TestSkip(f"--device cuda cannot run here:\n{self.log_tail(5)}")
        raise TestFailure(f"herd serve exited with {code} {when}\n{self.log_tail()}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def log_tail(self, num_lines=40):
        lines = self.log_text().splitlines()[-num_lines:]
        return f"--- last {len(lines)} lines of {self.log_path}:\n" + "\n".join(lines)

    def rank_pids(self):
        """rank -> pid of the herd processes (under mpirun: its children)."""
        if self.args.mode != "mpi":
            return {0: self.proc.pid}
        ranks = {}
        for pid, env in _tagged_pids(self.tag).items():
            rank = env.get("OMPI_COMM_WORLD_RANK")
            if rank is not None and pid != self.proc.pid:
                ranks[int(rank)] = pid
        return ranks

    def signal_coordinator(self, sig):
        """Sends sig to rank 0, the process that serves HTTP and drains. Under
        mpirun that is its child: mpirun itself turns SIGTERM into killing
        the job (after a grace period of about a second)."""
        pid = self.rank_pids().get(0)
        check(pid is not None, f"rank 0 of the server not found\n{self.log_tail()}")
        os.kill(pid, sig)

    def wait(self, timeout):
        """The exit code, or None if still running after timeout seconds."""
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
            return self.exit_code
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=30, expect_code=0):
        """SIGTERM to the coordinator; it must exit with expect_code within
        timeout seconds, leaving no process behind."""
        if self.running():
            self.signal_coordinator(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill()
            raise TestFailure(f"herd serve still running {timeout} s after SIGTERM\n"
                              f"{self.log_tail()}")
        leftovers = [pid for pid in _tagged_pids(self.tag) if _pid_alive(pid)]
        if leftovers:
            self.kill()
            raise TestFailure(f"processes left behind after herd serve exited: {leftovers}")
        check(expect_code is None or code == expect_code,
              f"herd serve exited with {code} after SIGTERM, expected {expect_code}\n"
              f"{self.log_tail()}")
        return code

    def kill(self):
        """SIGKILL every process of this server."""
        for pid in _tagged_pids(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            if self.exit_code is None:
                self.stop()
        else:
            if self.proc is not None:
                code = self.proc.poll()
                state = "still running" if code is None else f"exited with {code}"
                print(f"herd serve ({self.name}) {state} when the test failed\n"
                      f"{self.log_tail()}", flush=True)
            self.kill()
        return False


def assert_alive(server, what):
    check(server.running(), f"herd serve died during {what}\n{server.log_tail()}")
    try:
        response = http_request(server.port, "GET", "/health", timeout=30)
    except OSError as e:
        raise TestFailure(f"GET /health after {what}: {e!r}\n{server.log_tail()}")
    check(response.status == 200, f"GET /health after {what}: {response!r}")


def wait_idle(server, what, timeout=30):
    """Waits until the server has no request running or waiting and no KV
    cache block in use (nothing leaked)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(server.port)
        state = {name: metric_sum(m, name) for name in
                 ("herd:num_requests_running", "herd:num_requests_waiting",
                  "herd:kv_cache_usage_perc")}
        if all(value == 0 for value in state.values()):
            return
        check(time.monotonic() < deadline, f"{timeout} s after {what} the server is not idle: "
              f"{state}")
        time.sleep(0.1)


def good_request_works(server, headers=None, what="a valid request"):
    """A valid greedy request completes with max_tokens ids equal to herd
    generate's."""
    prompt = [5, 17, 42, 99]
    response = http_request(server.port, "POST", "/v1/completions",
                            completion_body(prompt, 8), headers=headers)
    check(response.status == 200, f"{what}: POST /v1/completions -> {response!r}")
    ids = response.json()["choices"][0].get("token_ids")
    expected = greedy_reference(server.args, prompt, 8)
    check(ids == expected, f"{what}: token_ids {ids}, herd generate gives {expected}")


# ---------------------------------------------------------------- running a test


def _cleanup():
    for server in _SERVERS:
        try:
            server.kill()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    if not any(getattr(s.args, "keep", False) for s in _SERVERS):
        for path in _TEMP_DIRS:
            shutil.rmtree(path, ignore_errors=True)


def _on_signal(signum, frame):
    _cleanup()
    sys.exit(128 + signum)


def run_test(test_fn, description):
    """Parses the arguments and runs test_fn(args): 0 pass, 1 fail, 77 skip.
    Whatever happens, every server it started is killed."""
    args = parse_args(description)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    name = os.path.basename(sys.argv[0])
    code = 1
    try:
        check(os.access(args.herd, os.X_OK), f"no herd binary at {args.herd}")
        if args.mode == "mpi" and not shutil.which(args.mpirun):
            raise TestSkip(f"no mpirun at {args.mpirun}")
        start = time.monotonic()
        test_fn(args)
        log(f"PASS {name} --mode {args.mode} ({time.monotonic() - start:.1f} s)")
        code = 0
    except TestSkip as e:
        log(f"SKIP {name}: {e}")
        code = SKIP
    except TestFailure as e:
        log(f"FAIL {name} --mode {args.mode}: {e}")
    except Exception:  # noqa: BLE001 - an unexpected error fails the test with its trace
        log(f"FAIL {name} --mode {args.mode}: unexpected error")
        traceback.print_exc()
    finally:
        _cleanup()
    sys.exit(code)


def run_parallel(fn, items, num_threads=None):
    """fn(item) for every item on its own thread (or num_threads workers);
    returns the results in order. An exception in fn is returned in place of
    its result."""
    results = [None] * len(items)
    lock = threading.Lock()
    next_idx = [0]

    def worker():
        while True:
            with lock:
                idx = next_idx[0]
                next_idx[0] += 1
            if idx >= len(items):
                return
            try:
                results[idx] = fn(items[idx])
            except Exception as e:  # noqa: BLE001 - the caller checks each result
                results[idx] = e

    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(num_threads or len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results

