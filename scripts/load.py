#!/usr/bin/env python3
"""Soak/load run against endorm (docs/RELIABILITY.md, "Load and soak"). Python stdlib only.

    scripts/load.py [--clients 64] [--requests 10000] [--bad 0.1] [--endorm target/release/endorm]
                    [--model GGUF] [--threads 2]          # starts its own daemon on a temp socket
    scripts/load.py --socket PATH --pid PID ...           # or drives a running one

N clients each send M requests of mixed routes and sizes (/v1/score chat and raw, short and long,
/v1/rerank, /rerank, /get_reward, /v1/completions, /tokenize, /detokenize), a fraction of them
documented bad ones (invalid JSON, empty candidates, unknown model, a token id outside the
vocabulary, a `terminal` chat request). Acceptable: 200 for a good request, its documented 4xx for
a bad one, and 503 with Retry-After for either. Every second it reads the daemon's RSS from
/proc/PID/status and sends every 5 s a control request whose scores must never change. Prints statuses,
p50/p99 latency per route, RSS after the first minute and at the end; exits 1 on any violation
(another status, a 503 without Retry-After, a connection error, a changed control score, or -- with
--rss-tolerance -- RSS at the end more than that fraction above RSS after the first minute).
"""

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = Path.home() / ".cache/endorm/models/SmolLM2-135M-Instruct.Q4_1.gguf"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=600):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class Client:
    """One keep-alive connection, reopened when the daemon closes it."""

    def __init__(self, args):
        self.args = args
        self.connection = None

    def open(self):
        if self.args.socket:
            return UnixHTTPConnection(self.args.socket)
        return http.client.HTTPConnection(self.args.host, self.args.port, timeout=600)

    def call(self, method, path, body):
        headers = {"Content-Type": "application/json"}
        if self.args.token:
            headers["Authorization"] = f"Bearer {self.args.token}"
        for attempt in range(2):
            if self.connection is None:
                self.connection = self.open()
            try:
                self.connection.request(method, path, body, headers)
                response = self.connection.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.connection.close()
                    self.connection = None
                return response.status, response.getheader("Retry-After"), data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the daemon closed between requests: retry once, fresh.
                self.connection.close()
                self.connection = None
                if attempt == 1:
                    raise


WORDS = "the river runs past the old mill where the miller keeps a ledger of every sack of grain".split()


def text(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def good(rng):
    """A valid request: (route label, path, body)."""
    kind = rng.choice(["score_chat", "score_raw", "score_long", "rerank", "rerank_tei", "reward",
                       "completions", "tokenize", "detokenize"])
    if kind == "score_chat":
        body = {"messages": [{"role": "user", "content": text(rng, rng.randint(3, 30))}],
                "candidates": [text(rng, rng.randint(1, 12)) for _ in range(rng.randint(1, 6))]}
        return kind, "/v1/score", body
    if kind == "score_raw":
        body = {"format": "raw", "prompt": text(rng, rng.randint(3, 40)),
                "candidates": [text(rng, rng.randint(1, 10)) for _ in range(rng.randint(1, 4))]}
        return kind, "/v1/score", body
    if kind == "score_long":
        body = {"format": "raw", "prompt": text(rng, rng.randint(100, 300)),
                "candidates": [text(rng, rng.randint(10, 30)) for _ in range(rng.randint(2, 4))]}
        return kind, "/v1/score", body
    if kind == "rerank":
        body = {"model": "rerank-english-v3.0", "query": text(rng, 8), "top_n": 2,
                "documents": [text(rng, rng.randint(2, 20)) for _ in range(rng.randint(1, 5))]}
        return kind, "/v1/rerank", body
    if kind == "rerank_tei":
        body = {"query": text(rng, 8), "texts": [text(rng, 6) for _ in range(rng.randint(1, 4))]}
        return kind, "/rerank", body
    if kind == "reward":
        prompt = text(rng, 10)
        body = {"query": [prompt + " " + text(rng, rng.randint(1, 15)) for _ in range(3)],
                "prompts": [prompt] * 3}
        return kind, "/get_reward", body
    if kind == "completions":
        body = {"prompt": text(rng, rng.randint(2, 40)), "echo": True, "max_tokens": rng.choice([0, 1]),
                "logprobs": rng.choice([0, 1, 5])}
        return kind, "/v1/completions", body
    if kind == "tokenize":
        return kind, "/tokenize", {"content": text(rng, rng.randint(1, 100)), "with_pieces": rng.random() < 0.5}
    return kind, "/detokenize", {"tokens": [rng.randrange(0, 49152) for _ in range(rng.randint(1, 30))]}


# Documented bad requests and the status each must get (docs/API.md, "Errors").
def bad(rng):
    kind = rng.choice(["invalid_json", "empty_candidates", "unknown_model", "bad_token",
                       "terminal_chat", "empty_messages"])
    if kind == "invalid_json":
        return kind, "/v1/score", b'{"candidates": ["a", ', {400}
    if kind == "empty_candidates":
        return kind, "/v1/score", {"prompt": "Hi", "candidates": []}, {400}
    if kind == "unknown_model":
        return kind, "/v1/score", {"model": "no-such-model", "prompt": "Hi", "candidates": ["a"]}, {404}
    if kind == "bad_token":
        return kind, "/detokenize", {"tokens": [1, 10 ** 9]}, {400}
    if kind == "terminal_chat":
        return kind, "/v1/score", {"format": "chat", "terminal": True, "prompt": "Hi", "candidates": ["a"]}, {400}
    return kind, "/v1/score", {"messages": [], "candidates": ["a"]}, {400}


CONTROL = {"messages": [{"role": "user", "content": "What is 2+2?"}], "candidates": ["4", "5", "four"]}


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Run:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.statuses = Counter()          # (kind, status)
        self.latency = defaultdict(list)   # kind -> seconds
        self.violations = []
        self.done = 0
        self.stop = threading.Event()

    def violate(self, message):
        with self.lock:
            if len(self.violations) < 1000:
                self.violations.append(message)

    def client(self, index):
        rng = random.Random(self.args.seed * 1_000_003 + index)
        client = Client(self.args)
        for _ in range(self.args.requests):
            if self.stop.is_set():
                return
            if rng.random() < self.args.bad:
                kind, path, body, expected = bad(rng)
            else:
                (kind, path, body), expected = good(rng), {200}
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            started = time.perf_counter()
            try:
                status, retry_after, data = client.call("POST", path, payload)
            except OSError as e:
                self.violate(f"{kind}: no response ({e!r})")
                client.connection = None
                continue
            elapsed = time.perf_counter() - started
            with self.lock:
                self.statuses[(kind, status)] += 1
                self.latency[kind].append(elapsed)
                self.done += 1
            if status == 503:
                if retry_after is None:
                    self.violate(f"{kind}: 503 without Retry-After")
            elif status not in expected:
                self.violate(f"{kind}: status {status} (expected {sorted(expected)}): {data[:300]!r}")

    def control(self, client):
        self.controls = getattr(self, "controls", 0) + 1
        for _ in range(20):
            status, _, data = client.call("POST", "/v1/score", json.dumps(CONTROL).encode())
            if status == 200:
                return [r["score"] for r in json.loads(data)["results"]]
            if status != 503:
                raise RuntimeError(f"control request: {status} {data[:300]!r}")
            time.sleep(0.2)
        raise RuntimeError("control request: 503 twenty times")

    def monitor(self, pid, samples):
        """RSS every second, independent of how long the control requests take."""
        started = time.perf_counter()
        while not self.stop.wait(1.0):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                kib = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS:"))
            except (OSError, StopIteration):
                self.violate("the daemon is gone")
                self.stop.set()
                return
            samples.append((time.perf_counter() - started, kib / 1024))

    def controller(self, expected):
        """The control request every --control-every seconds; its scores must never change."""
        client = Client(self.args)
        while not self.stop.wait(self.args.control_every):
            try:
                scores = self.control(client)
            except Exception as e:  # noqa: BLE001 -- any failure of the control request is a violation
                self.violate(f"control: {e!r}")
                continue
            if scores != expected:
                self.violate(f"control scores changed: {scores} != {expected}")


def start_daemon(args):
    directory = tempfile.TemporaryDirectory(prefix="endorm-load-")
    sock = os.path.join(directory.name, "endorm.sock")
    config = os.path.join(directory.name, "endorm.toml")
    Path(config).write_text(
        f"[server]\nqueue_depth = {args.queue_depth}\n\n"
        f"[models.load]\npath = {json.dumps(str(args.model))}\nn_threads = {args.threads}\n")
    log = open(os.path.join(directory.name, "daemon.log"), "wb")
    process = subprocess.Popen([args.endorm, "serve", "--config", config, "--socket", sock, "--exit-on-eof"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
    args.socket = sock
    wait_healthy(sock, process, log.name, 120)
    return process, directory


def wait_healthy(sock, process, log_name, seconds):
    """Waits until the daemon on `sock` says `ok`; exits naming its log if it dies or never does."""
    deadline = time.time() + seconds
    while True:
        try:
            connection = UnixHTTPConnection(sock, timeout=5)
            connection.request("GET", "/health")
            response = connection.getresponse()
            if response.status == 200 and json.loads(response.read()).get("status") == "ok":
                return
        except OSError:
            pass
        if process.poll() is not None or time.time() > deadline:
            sys.exit(f"the daemon did not become healthy; log in {log_name}")
        time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=10_000, help="requests per client")
    parser.add_argument("--bad", type=float, default=0.1, help="fraction of documented bad requests")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--socket", help="a running daemon's Unix socket (needs --pid)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="a running daemon's loopback TCP port (needs --pid)")
    parser.add_argument("--token", help="bearer token for TCP")
    parser.add_argument("--pid", type=int, help="the running daemon's pid, for its RSS")
    parser.add_argument("--endorm", default=str(ROOT / "target/release/endorm"))
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queue-depth", type=int, default=64)
    parser.add_argument("--max-seconds", type=float, default=0, help="stop the clients after this long (0: no limit)")
    parser.add_argument("--rss-tolerance", type=float, default=None,
                        help="fail when RSS at the end exceeds RSS after the first minute by this fraction (e.g. 0.05)")
    parser.add_argument("--control-every", type=float, default=5.0, help="seconds between control requests")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("load.py only drives a daemon on loopback or a Unix socket")

    process = directory = None
    if args.socket or args.port:
        if not args.pid:
            sys.exit("--socket/--port need --pid (for the daemon's RSS)")
        pid = args.pid
    else:
        process, directory = start_daemon(args)
        pid = process.pid

    run = Run(args)
    expected = run.control(Client(args))
    samples = []
    monitor = threading.Thread(target=run.monitor, args=(pid, samples), daemon=True)
    controller = threading.Thread(target=run.controller, args=(expected,), daemon=True)
    started = time.perf_counter()
    monitor.start()
    controller.start()
    if args.max_seconds:
        threading.Timer(args.max_seconds, run.stop.set).start()
    clients = [threading.Thread(target=run.client, args=(i,), daemon=True) for i in range(args.clients)]
    for c in clients:
        c.start()
    # With --max-seconds, requests still in flight get a minute to finish; then the figures are
    # reported without them (a busy machine can hold one for long).
    deadline = started + args.max_seconds + 60 if args.max_seconds else None
    for c in clients:
        c.join(None if deadline is None else max(0.0, deadline - time.perf_counter()))
    unfinished = sum(c.is_alive() for c in clients)
    wall = time.perf_counter() - started
    run.stop.set()
    monitor.join()
    controller.join(60)
    if process is not None:
        alive = process.poll() is None
        process.stdin.close()
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if not alive:
            run.violate(f"the daemon exited during the run ({code})")
        directory.cleanup()

    statuses = Counter()
    for (kind, status), n in run.statuses.items():
        statuses[status] += n
    all_latency = [x for xs in run.latency.values() for x in xs]
    rss_1min = next((mib for t, mib in samples if t >= 60), samples[-1][1] if samples else float("nan"))
    rss_end = samples[-1][1] if samples else float("nan")
    if args.rss_tolerance is not None and samples and rss_end > rss_1min * (1 + args.rss_tolerance):
        run.violate(f"RSS grew from {rss_1min:.1f} MiB after 1 min to {rss_end:.1f} MiB at the end")
    figures = {
        "clients": args.clients, "requests_per_client": args.requests, "requests": run.done,
        "wall_s": round(wall, 1), "rate_per_s": round(run.done / wall, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "by_route": {f"{k} {s}": n for (k, s), n in sorted(run.statuses.items())},
        "p50_ms": round(percentile(all_latency, 50) * 1e3, 1),
        "p99_ms": round(percentile(all_latency, 99) * 1e3, 1),
        "p50_p99_ms_by_route": {k: [round(percentile(v, 50) * 1e3, 1), round(percentile(v, 99) * 1e3, 1)]
                                for k, v in sorted(run.latency.items())},
        "rss_mib_first": round(samples[0][1], 1) if samples else None,
        "rss_mib_1min": round(rss_1min, 1), "rss_mib_end": round(rss_end, 1),
        "rss_mib_max": round(max((m for _, m in samples), default=float("nan")), 1),
        "rss_samples": len(samples), "control_checks": getattr(run, "controls", 0), "clients_unfinished_at_deadline": unfinished, "violations": len(run.violations),
    }
    print(json.dumps(figures, indent=2))
    for v in run.violations[:50]:
        print("VIOLATION", v)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    sys.exit(1 if run.violations else 0)


if __name__ == "__main__":
    main()
