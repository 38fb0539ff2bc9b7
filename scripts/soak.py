#!/usr/bin/env python3
"""The soak of docs/RELIABILITY.md: a daemon under 64 clients for an hour, with reloads, a SIGHUP, a
`kill -9` and restart, and clients that leave mid-request. Python stdlib only; loopback only.

    scripts/soak.py                     # 60 minutes, 64 clients (the run in RELIABILITY.md)
    scripts/soak.py --minutes 3         # the version .ci/run runs (scripts/test)

It starts `endorm serve` on a fresh Unix socket and a free loopback TCP port (with a token), then:

* 64 clients, each its own identity (`X-Endorm-Client: soak-N`), half on the socket and half on
  TCP, send mixed requests (scripts/load.py's: /v1/score chat and raw with 1-16 candidates, the
  rerank dialects, /get_reward, /v1/completions, /tokenize, /detokenize; 5% documented bad ones)
  and GET /health. A third of the score, rerank and reward requests come from a fixed pool whose
  answers were taken from the same daemon by one client alone before the run: every answer to one
  must give the same scores (the largest difference is reported; over --score-tolerance it is a
  violation).
* the config file is rewritten every --reload-every seconds (the daemon watches it and reloads);
  one SIGHUP at a quarter of the run; at half of it the daemon is killed with SIGKILL and started
  again on the same socket and port: clients retry a refused connection for up to 60 s (the
  restart window), as a client of a restarting service would;
* every --disconnect-every seconds a client sends a long request and closes its connection 50 ms
  later, without reading the answer.

Accepted: 200 for a good request, its documented 4xx for a bad one, 503 with Retry-After; a
connection refused or reset only inside the restart window. Anything else is a violation. It prints
a JSON summary and a Markdown table (requests, statuses, p50/p99 per route, RSS each minute) and
exits 1 on any violation.
"""

import argparse
import http.client
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402 -- scripts/load.py: the request mix and the Unix-socket connection

ROOT = Path(__file__).resolve().parent.parent
RETRY_WINDOW_S = 60.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`endorm serve` on a socket and a loopback port, restartable on the same ones."""

    def __init__(self, args):
        self.args = args
        self.dir = tempfile.TemporaryDirectory(prefix="endorm-soak-")
        self.socket = os.path.join(self.dir.name, "endorm.sock")
        self.config = os.path.join(self.dir.name, "endorm.toml")
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.reloads = 0
        self.write_config()
        self.log = open(os.path.join(self.dir.name, "daemon.log"), "ab")
        self.process = None
        self.start()

    def write_config(self):
        # Each reload changes a setting that does not change a score (the queue's depth), so the
        # model is reloaded and its answers must stay the same.
        depth = 64 + self.reloads % 2
        Path(self.config + ".tmp").write_text(
            f"[server]\nqueue_depth = {depth}\nmax_connections = 256\n\n"
            f"[models.soak]\npath = {json.dumps(str(self.args.model))}\nn_threads = {self.args.threads}\n")
        os.replace(self.config + ".tmp", self.config)

    def reload(self):
        self.reloads += 1
        self.write_config()

    def start(self):
        env = {**os.environ, "ENDORM_TOKEN": self.token}
        self.process = subprocess.Popen(
            [self.args.endorm, "serve", "--config", self.config, "--socket", self.socket,
             "--listen", f"127.0.0.1:{self.port}", "--exit-on-eof"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        load.wait_healthy(self.socket, self.process, self.log.name, 180)

    def kill_and_restart(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.start()

    def stop(self):
        alive = self.process.poll() is None
        self.process.stdin.close()
        try:
            code = self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return alive, code


class Connection:
    """One keep-alive connection of one client, on the socket or TCP; reopened when closed."""

    def __init__(self, daemon, name, tcp):
        self.daemon, self.name, self.tcp = daemon, name, tcp
        self.conn = None

    def call(self, method, path, body=None):
        headers = {"X-Endorm-Client": self.name}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.tcp:
            headers["Authorization"] = f"Bearer {self.daemon.token}"
        for attempt in range(2):
            if self.conn is None:
                self.conn = (http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=600)
                             if self.tcp else load.UnixHTTPConnection(self.daemon.socket))
            try:
                self.conn.request(method, path, body, headers)
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, response.getheader("Retry-After"), data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 1:
                    raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def pool(seed, n):
    """The fixed requests whose answers are known: score, rerank and reward bodies."""
    rng = random.Random(seed)
    bodies = []
    while len(bodies) < n:
        kind, path, body = load.good(rng)
        if kind in ("score_chat", "score_raw", "rerank", "reward"):
            bodies.append((kind, path, body))
    # Two with many candidates (up to 16).
    for k in (9, 16):
        bodies.append(("score_many", "/v1/score", {
            "messages": [{"role": "user", "content": load.text(rng, 12)}],
            "candidates": [load.text(rng, rng.randint(1, 12)) for _ in range(k)]}))
    return bodies


def scores_of(path, data):
    answer = json.loads(data)
    if path == "/v1/score":
        return [r["score"] for r in answer["results"]]
    if path == "/v1/rerank":
        return sorted((r["index"], r["relevance_score"]) for r in answer["results"])
    if path == "/get_reward":
        return answer["rewards"]
    raise ValueError(path)


def difference(a, b):
    flat = lambda xs: [v for x in xs for v in (x if isinstance(x, (list, tuple)) else [x])]
    a, b = flat(a), flat(b)
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


class Soak:
    def __init__(self, args, daemon, known):
        self.args, self.daemon, self.known = args, daemon, known
        self.lock = threading.Lock()
        self.statuses = Counter()
        self.latency = defaultdict(list)
        self.violations = []
        self.stop = threading.Event()
        self.restarting = threading.Event()
        self.restart_window = [None, None]
        self.retried = 0
        self.compared = 0
        self.max_difference = 0.0
        self.disconnects = 0
        self.rss = []  # (minute, MiB)
        self.unavailable = Counter()  # 503s by error code

    def violate(self, message):
        with self.lock:
            if len(self.violations) < 1000:
                self.violations.append(f"{time.strftime('%H:%M:%S')} {message}")

    def in_restart_window(self, at):
        start, end = self.restart_window
        return self.restarting.is_set() or (start is not None and start <= at <= (end or at) + 5)

    def client(self, index):
        rng = random.Random(self.args.seed * 1_000_003 + index)
        conn = Connection(self.daemon, f"soak-{index}", tcp=index % 2 == 1)
        while not self.stop.is_set():
            roll = rng.random()
            known = None
            if roll < 0.05:
                kind, path, body, expected = load.bad(rng)
                method = "POST"
            elif roll < 0.10:
                kind, path, body, expected, method = "health", "/health", None, {200}, "GET"
            elif roll < 0.40:
                known = rng.randrange(len(self.known))
                kind, path, body = self.known[known][0]
                expected, method = {200}, "POST"
            else:
                (kind, path, body), expected, method = load.good(rng), {200}, "POST"
            payload = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
            started = time.time()
            failed_at = None
            while True:
                try:
                    status, retry_after, data = conn.call(method, path, payload)
                    break
                except OSError as e:
                    conn.close()
                    # A request in flight at the kill may have waited long already: its retries get
                    # RETRY_WINDOW_S from its first failure, as a client's retry budget would.
                    failed_at = failed_at or time.time()
                    if self.in_restart_window(failed_at) and time.time() - failed_at < RETRY_WINDOW_S:
                        with self.lock:
                            self.retried += 1
                        time.sleep(0.5)
                        continue
                    self.violate(f"{kind}: no response ({e!r})")
                    status = None
                    break
            if status is None:
                continue
            elapsed = time.time() - started
            with self.lock:
                self.statuses[(kind, status)] += 1
                self.latency[kind].append(elapsed)
            if status == 503:
                if retry_after is None:
                    self.violate(f"{kind}: 503 without Retry-After: {data[:200]!r}")
                    continue
                try:
                    code = json.loads(data)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "?"
                with self.lock:
                    self.unavailable[code] += 1
                # As a well-behaved client: wait what the daemon asked (at most 5 s) before the next.
                self.stop.wait(min(float(retry_after), 5.0))
            elif status not in expected:
                self.violate(f"{kind}: status {status} (expected {sorted(expected)}): {data[:300]!r}")
            elif known is not None:
                d = difference(scores_of(path, data), self.known[known][1])
                with self.lock:
                    self.compared += 1
                    self.max_difference = max(self.max_difference, d)
                if d > self.args.score_tolerance:
                    self.violate(f"{kind}: scores differ from the single-client run by {d}")

    def leaver(self):
        """Every --disconnect-every seconds: a long request, abandoned 50 ms after it is sent."""
        rng = random.Random(self.args.seed)
        while not self.stop.wait(self.args.disconnect_every):
            body = json.dumps({"format": "raw", "prompt": load.text(rng, 600),
                               "candidates": [load.text(rng, 40) for _ in range(8)]}).encode()
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.daemon.socket)
                s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nX-Endorm-Client: soak-leaver\r\n"
                          b"Content-Type: application/json\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\n\r\n" + body)
                time.sleep(0.05)
                s.close()
                with self.lock:
                    self.disconnects += 1
            except OSError:
                pass  # the restart window

    def monitor(self, started):
        minute = 0
        while not self.stop.wait(1.0):
            elapsed = time.time() - started
            if elapsed >= minute * 60:
                try:
                    status = Path(f"/proc/{self.daemon.process.pid}/status").read_text()
                    kib = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS:"))
                    self.rss.append((minute, round(kib / 1024, 1)))
                except (OSError, StopIteration):
                    pass  # the restart window
                minute += 1

    def events(self, started, seconds):
        """The reloads, the SIGHUP, the kill -9 and restart, at their times."""
        plan = [(t, "reload") for t in range(int(self.args.reload_every), int(seconds), int(self.args.reload_every))]
        plan += [(seconds / 4, "sighup"), (seconds / 2, "kill")]
        for at, what in sorted(plan):
            if self.stop.wait(max(0.0, started + at - time.time())):
                return
            if what == "reload":
                self.daemon.reload()
            elif what == "sighup":
                self.daemon.process.send_signal(signal.SIGHUP)
            else:
                self.restarting.set()
                self.restart_window[0] = time.time()
                self.daemon.kill_and_restart()
                self.restart_window[1] = time.time()
                self.restarting.clear()
            print(f"soak: {what} at {time.time() - started:.0f} s", file=sys.stderr, flush=True)


def single_client_answers(daemon, bodies):
    conn = Connection(daemon, "soak-reference", tcp=False)
    known = []
    for kind, path, body in bodies:
        for _ in range(50):
            status, _, data = conn.call("POST", path, json.dumps(body).encode())
            if status == 200:
                break
            time.sleep(0.2)
        else:
            sys.exit(f"the reference request {kind} got {status}: {data[:300]!r}")
        known.append(((kind, path, body), scores_of(path, data)))
    conn.close()
    return known


def percentile(values, p):
    return load.percentile(values, p)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--reload-every", type=float, default=None, help="seconds (default: 5 min, or a minute for runs under 10 min)")
    parser.add_argument("--disconnect-every", type=float, default=None, help="seconds (default: 60, or 20 for runs under 10 min)")
    parser.add_argument("--score-tolerance", type=float, default=0.0,
                        help="largest accepted difference from the single-client answer (default 0: bit for bit)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--endorm", default=str(ROOT / "target/release/endorm"))
    parser.add_argument("--model", default=str(load.DEFAULT_MODEL))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()
    short = args.minutes < 10
    args.reload_every = args.reload_every or (60.0 if short else 300.0)
    args.disconnect_every = args.disconnect_every or (20.0 if short else 60.0)
    seconds = args.minutes * 60

    daemon = Daemon(args)
    known = single_client_answers(daemon, pool(args.seed, 22))
    soak = Soak(args, daemon, known)
    started = time.time()
    threads = [threading.Thread(target=soak.client, args=(i,), daemon=True) for i in range(args.clients)]
    threads += [threading.Thread(target=t, args=a, daemon=True)
                for t, a in ((soak.leaver, ()), (soak.monitor, (started,)), (soak.events, (started, seconds)))]
    for t in threads:
        t.start()
    soak.stop.wait(seconds)
    soak.stop.set()
    # Requests in flight at the end are waited for (a loaded machine holds one for minutes).
    deadline = time.time() + 600
    for t in threads[: args.clients]:
        t.join(max(0.0, deadline - time.time()))
    unfinished = sum(t.is_alive() for t in threads[: args.clients])
    wall = time.time() - started
    alive, code = daemon.stop()
    if not alive:
        soak.violate(f"the daemon exited during the run ({code})")
    if unfinished:
        soak.violate(f"{unfinished} clients still waiting 600 s after the end")

    statuses = Counter()
    for (kind, status), n in soak.statuses.items():
        statuses[status] += n
    requests = sum(statuses.values())
    summary = {
        "minutes": args.minutes, "clients": args.clients, "requests": requests,
        "rate_per_s": round(requests / wall, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "unavailable_by_code": dict(soak.unavailable),
        "reloads": daemon.reloads, "sighup": 1, "kill_restart": 1,
        "restart_window_s": round((soak.restart_window[1] or 0) - (soak.restart_window[0] or 0), 1),
        "retried_in_restart_window": soak.retried, "abandoned_requests": soak.disconnects,
        "compared_with_single_client": soak.compared, "max_score_difference": soak.max_difference,
        "p50_p99_ms": {k: [round(percentile(v, 50) * 1e3, 1), round(percentile(v, 99) * 1e3, 1)]
                       for k, v in sorted(soak.latency.items())},
        "rss_mib_by_minute": soak.rss, "violations": len(soak.violations),
    }
    print(json.dumps(summary, indent=2))
    print("\n| route | requests | statuses | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for kind in sorted(soak.latency):
        by = {s: n for (k, s), n in soak.statuses.items() if k == kind}
        p50, p99 = summary["p50_p99_ms"][kind]
        print(f"| {kind} | {sum(by.values())} | {', '.join(f'{s}: {n}' for s, n in sorted(by.items()))} | {p50} | {p99} |")
    for v in soak.violations[:50]:
        print("VIOLATION", v)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    daemon.dir.cleanup()
    sys.exit(1 if soak.violations else 0)


if __name__ == "__main__":
    main()
