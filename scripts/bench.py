#!/usr/bin/env python3
"""endorm's benchmark scenarios A-D, each beside the peer a user would otherwise use.

    scripts/bench.py [--endorm target/release/endorm] [--model GGUF] [--editor-model GGUF ...]
                     [--threads 2] [--scenarios A,B,C,E,D] [--json out.json]

A  one request, 512 context tokens + 8 candidates x 64 tokens, cold (`endorm bench`, in process)
B  editor typing: a ~2000-token file prefix growing by a few tokens per request, 5 candidates
   x ~16 tokens, 50 requests through the daemon with the prefix cache on: p50 / p99, hit ratio
   (on --model and on each --editor-model)
C  16 concurrent clients each sending an A-like request to the daemon vs. one client
E  editor-sized C: 16 concurrent clients, each a 200-token context and 5 candidates x 16 tokens,
   against the same 16 requests sent one after another; batching off and on
F  E with tiny requests: a ~30-token context and 2 candidates x ~8 tokens each (not in the default
   list: --scenarios E,F)
D  the daemon's resident memory after load and after each scenario, and time from start to a
   healthy /health
G  best-of-n with many samples: code-dev.jsonl's tasks (HumanEval x 100 sampled completions)
   through `endorm eval`'s reward pass and through /v1/score (each task one request of all its
   completions), with the candidate prefix tree off, then on: candidate tokens decoded, wall time,
   memory (not in the default list: --scenarios G; --code-data, --tasks)
H  fairness inside one long request: a tiny request of client `editor`, alone, then sent while a
   ~3,500-token raw context of client `batch` decodes (n_ctx 4096); the target is 3x alone plus
   one 512-token slice (not in the default list: --scenarios H)

--variant NAME:KEY=VALUE,... (repeatable) runs A, B, C and E once per variant instead, each with
those model settings (config keys: n_batch, type_k, type_v, prefix_tree, ...) over the defaults,
the variants interleaved within each scenario so that the machine's drift hits them alike; A
leaves the naive path out. This is how the KV types were compared (BENCHMARKS.md).

Peers, in the same run and on the same tokens: llama-cpp-python (`logits_all`, the log-probs read
from its scores) naively (one full evaluation per candidate) and rewinding (the context evaluated
once, each candidate evaluated after rewinding to it). Install it built for the same CPU target as
endorm (BENCHMARKS.md), or the peer columns are left out. Prints a Markdown table (BENCHMARKS.md).
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = Path.home() / ".cache/endorm/models/SmolLM2-135M-Instruct.Q4_1.gguf"

# The same text `endorm bench` decodes (src/bench.rs), so scenario A's peers see its tokens.
TEXT = (
    "The river runs past the old mill, where the miller keeps a ledger of every sack "
    "of grain. In winter the wheel freezes and the village waits; in spring the water returns and "
    "the stones turn again. Children count the sacks, merchants argue over prices, and the ledger "
    "grows thicker every year. "
)


def code_file(functions):
    """A Python file an editor might hold, one small function after another."""
    return "".join(
        f"def step_{i}(values, scale={i}):\n"
        f"    \"\"\"Scale every value by {i} and drop the negative ones.\"\"\"\n"
        f"    return [v * scale for v in values if v >= 0]\n\n"
        for i in range(functions)
    )


EDITOR_CANDIDATES = [
    "    return sorted(values, key=abs)[:scale]\n",
    "    total = sum(values)\n    return total / max(len(values), 1)\n",
    "    raise NotImplementedError('step not written yet')\n",
    "    return [v for v in values if v % scale == 0]\n",
    "    print(values)\n    return None  # debugging\n",
]


# --- the daemon -------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=600):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def call(sock, method, path, body=None, client=None):
    connection = UnixHTTPConnection(sock)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        if client:
            headers["X-Endorm-Client"] = client
        connection.request(method, path, payload, headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)
    finally:
        connection.close()


def score(sock, body, client=None):
    started = time.perf_counter()
    status, response = call(sock, "POST", "/v1/score", body, client)
    if status != 200:
        raise RuntimeError(f"/v1/score answered {status}: {response}")
    return response, time.perf_counter() - started


class Daemon:
    """`endorm serve` on a temp socket with a config of `settings`; stops when its stdin closes."""

    def __init__(self, endorm, model, threads, **settings):
        self.dir = tempfile.TemporaryDirectory()
        self.sock = os.path.join(self.dir.name, "endorm.sock")
        config = os.path.join(self.dir.name, "endorm.toml")
        lines = [f"[models.bench]", f"path = {json.dumps(str(model))}", f"n_threads = {threads}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        Path(config).write_text("\n".join(lines) + "\n")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [endorm, "serve", "--config", config, "--socket", self.sock, "--exit-on-eof"],
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        while not self.healthy():
            if self.process.poll() is not None or time.perf_counter() - started > 60:
                raise RuntimeError("the daemon did not become healthy")
            time.sleep(0.005)
        self.start_s = time.perf_counter() - started

    def healthy(self):
        try:
            status, body = call(self.sock, "GET", "/health")
        except OSError:
            return False
        return status == 200 and body.get("status") == "ok"

    def rss_mib(self):
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return kib / 1024

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.dir.cleanup()


# --- llama-cpp-python peers -------------------------------------------------------------------


class Peer:
    """llama-cpp-python with every row's logits kept (`logits_all`), as a user would score with it."""

    def __init__(self, model, threads, n_ctx):
        import llama_cpp
        import numpy

        self.np = numpy
        started = time.perf_counter()
        self.llm = llama_cpp.Llama(
            model_path=str(model),
            n_ctx=n_ctx,
            n_batch=512,
            n_ubatch=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            flash_attn=True,
            verbose=False,
        )
        self.load_s = time.perf_counter() - started

    def tokenize(self, text):
        return self.llm.tokenize(text.encode(), add_bos=False, special=False)

    def rewards(self, start, tokens):
        """Sum of log-probs and the soft values of the rows that score `tokens` at `start`."""
        rows = self.np.asarray(self.llm.scores[start - 1 : start - 1 + len(tokens)], dtype=self.np.float64)
        top = rows.max(axis=1)
        v = top + self.np.log(self.np.exp(rows - top[:, None]).sum(axis=1))
        q = rows[self.np.arange(len(tokens)), tokens]
        return float((q - v).sum())

    def naive(self, context, candidates):
        for candidate in candidates:
            self.llm.reset()
            self.llm.eval(context + candidate)
            self.rewards(len(context), candidate)

    def rewinding(self, context, candidates):
        """The context once (reusing the longest prefix still in the KV cache), then each candidate
        after rewinding to the context's end."""
        shared = 0
        for a, b in zip(self.llm.input_ids[: self.llm.n_tokens], context):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(context) - 1)
        self.llm.n_tokens = shared
        self.llm.eval(context[shared:])
        for candidate in candidates:
            self.llm.n_tokens = len(context)
            self.llm.eval(candidate)
            self.rewards(len(context), candidate)

    def decode_after(self, context, tokens, repeats=5):
        """Median seconds to evaluate `tokens` after `context` (the context itself not timed)."""
        self.llm.reset()
        self.llm.eval(context)
        times = []
        for _ in range(repeats):
            self.llm.n_tokens = len(context)
            started = time.perf_counter()
            self.llm.eval(tokens)
            times.append(time.perf_counter() - started)
        return statistics.median(times)


def peer_or_none(model, threads, n_ctx):
    try:
        return Peer(model, threads, n_ctx)
    except ImportError as error:
        print(f"peers left out: {error}", file=sys.stderr)
        return None


def timed(f, *args):
    started = time.perf_counter()
    f(*args)
    return time.perf_counter() - started


# --- scenarios --------------------------------------------------------------------------------


def bench_flags(settings):
    """`endorm bench` flags for model settings (the config's keys)."""
    flags = []
    for key, value in settings.items():
        flag = {"n_threads": "threads"}.get(key, key).replace("_", "-")
        flags += [f"--{flag}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def parse_variant(text):
    """`NAME:KEY=VALUE,...` as (name, settings); values are ints, booleans or strings."""
    name, _, rest = text.partition(":")
    settings = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        if value.lstrip("-").isdigit():
            value = int(value)
        elif value in ("true", "false"):
            value = value == "true"
        settings[key.strip()] = value
    return name, settings


def scenario_variants(args, variants, save=lambda result: None):
    """A, B, C and E for each variant, the variants interleaved within each scenario; `save` sees
    the figures after each variant's run, so a cut-off run keeps what it measured."""
    result = {name: {} for name, _ in variants}
    wanted = set(args.scenarios.upper().split(","))
    if "A" in wanted:
        for name, settings in variants:
            out, peak_mib = run_measured(
                [args.endorm, "bench", "--json", "--model", str(args.model), "--threads", str(args.threads),
                 "--repeats", str(args.repeats), "--naive", "false"] + bench_flags(settings)
            )
            report = json.loads(out)
            result[name]["A"] = {"shared_s": report["shared_s"], "plain_s": report["plain_s"], "peak_rss_mib": peak_mib}
            save(result)
    if "B" in wanted:
        prefixes = editor_requests(args.requests)
        for name, settings in variants:
            daemon = Daemon(args.endorm, args.model, args.threads, **{"n_ctx": 4096, "cache_slots": 4, **settings})
            try:
                latencies = []
                for i, prefix in enumerate(prefixes):
                    _, seconds = score(daemon.sock, {"format": "raw", "prompt": prefix, "candidates": EDITOR_CANDIDATES})
                    if i:
                        latencies.append(seconds)
                result[name]["B"] = {"p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
                                     "rss_mib": daemon.rss_mib()}
            finally:
                daemon.close()
            save(result)
    for scenario, make in (("C", client_request), ("E", small_request)):
        if scenario not in wanted:
            continue
        requests = [make(i) for i in range(args.clients)]
        for batching in (False, True):
            for name, settings in variants:
                daemon = Daemon(args.endorm, args.model, args.threads, **{**settings, "batching": batching})
                try:
                    key = f"{scenario} batching" if batching else scenario
                    if scenario == "C" and not batching:
                        result[name]["D"] = {"rss_after_load_mib": daemon.rss_mib(), "start_s": daemon.start_s}
                    score(daemon.sock, requests[0])  # warm-up
                    tokens, started = 0, time.perf_counter()
                    for body in requests[: args.single_requests if scenario == "C" else len(requests)]:
                        tokens += score(daemon.sock, body)[0]["usage"]["total_tokens"]
                    sequential = tokens / (time.perf_counter() - started)
                    tokens, seconds, failed = concurrently(daemon.sock, requests)
                    result[name][key] = {"sequential_tok_s": sequential, "concurrent_tok_s": tokens / seconds,
                                         "failed": failed, "rss_mib": daemon.rss_mib()}
                finally:
                    daemon.close()
                save(result)
    return result


def variants_report(result, budget, clients=16):
    names = list(result)
    base = names[0]
    lines = ["| scenario | measure | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]

    def row(scenario, measure, get, fmt, ratio=None):
        cells = []
        for name in names:
            value = get(result[name])
            if value is None:
                cells.append("—")
                continue
            cell = fmt(value)
            if ratio and name != base and get(result[base]):
                cell += f" ({ratio(value, get(result[base])):.2f}×)"
            cells.append(cell)
        lines.append(f"| {scenario} | {measure} | " + " | ".join(cells) + " |")

    time_ratio = lambda value, baseline: value / baseline
    rate_ratio = lambda value, baseline: baseline / value
    pick = lambda *keys: lambda r: _dig(r, keys)
    row("A", "one cold request, s (× first column)", pick("A", "shared_s"), lambda x: f"{x:.3f}", time_ratio)
    row("A", "plain decode of the same tokens, s", pick("A", "plain_s"), lambda x: f"{x:.3f}")
    row("A", "peak memory of `endorm bench`", pick("A", "peak_rss_mib"), lambda x: f"{x:.0f} MiB")
    row("B", "p50 latency, s (× first column)", pick("B", "p50_s"), lambda x: f"{x:.3f}", time_ratio)
    row("B", "p99 latency, s", pick("B", "p99_s"), lambda x: f"{x:.3f}")
    row("B", "memory after B", pick("B", "rss_mib"), lambda x: f"{x:.0f} MiB")
    for key in ("C", "C batching", "E", "E batching"):
        row(key, "one after another, tok/s (time × first column)", pick(key, "sequential_tok_s"), lambda x: f"{x:.0f}", rate_ratio)
        row(key, f"{clients} at once, tok/s (time × first column)", pick(key, "concurrent_tok_s"), lambda x: f"{x:.0f}", rate_ratio)
        row(key, f"memory after {key} ({budget})", pick(key, "rss_mib"), lambda x: f"{x:.0f} MiB")
    row("D", "memory after load", pick("D", "rss_after_load_mib"), lambda x: f"{x:.0f} MiB")
    row("D", "start to healthy, s", pick("D", "start_s"), lambda x: f"{x:.3f}")
    return "\n".join(lines)


def _dig(record, keys):
    for key in keys:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record



def bench_tokens(peer, n):
    text, tokens = "", []
    while len(tokens) < n:
        text += TEXT
        tokens = peer.tokenize(text)
    return tokens[:n]


def scenario_a(args, peer):
    result = {}
    for n_batch in (512, 63):
        out, peak_mib = run_measured(
            [args.endorm, "bench", "--json", "--model", str(args.model), "--threads", str(args.threads),
             "--n-batch", str(n_batch), "--repeats", str(args.repeats)]
        )
        report = json.loads(out)
        result[f"endorm_n_batch_{n_batch}"] = {k: report[k] for k in ("shared_s", "naive_s", "plain_s")}
        result[f"endorm_n_batch_{n_batch}"]["peak_rss_mib"] = peak_mib
    if peer:
        tokens = bench_tokens(peer, 512 + 8 * 64)
        context, candidates = tokens[:512], [tokens[512 + 64 * i : 512 + 64 * (i + 1)] for i in range(8)]
        peer.rewinding(context, candidates)  # warm-up
        result["peer_naive_s"] = statistics.median(timed(peer.naive, context, candidates) for _ in range(args.repeats))
        rewinds = []
        for _ in range(args.repeats):
            peer.llm.reset()
            rewinds.append(timed(peer.rewinding, context, candidates))
        result["peer_rewinding_s"] = statistics.median(rewinds)
    return result


def run_measured(command):
    """Runs `command`; its standard output and its peak resident memory (MiB)."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"{command[:2]} exited with {process.returncode}")
        out.seek(0)
        return out.read().decode(), usage.ru_maxrss / 1024


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def editor_requests(requests):
    """A file prefix of ~2000 tokens, then the same file a few characters longer each time."""
    base = code_file(48)
    more = code_file(60)[len(base) :]
    return [base + more[: 9 * i] for i in range(requests + 1)]


def scenario_b(args, model, peer):
    prefixes = editor_requests(args.requests)
    result = {}
    for n_batch in (512, 63):
        daemon = Daemon(args.endorm, model, args.threads, n_ctx=4096, n_batch=n_batch, cache_slots=4)
        try:
            latencies, cached, prompt, candidate_tokens = [], 0, 0, 0
            for i, prefix in enumerate(prefixes):
                response, seconds = score(daemon.sock, {"format": "raw", "prompt": prefix, "candidates": EDITOR_CANDIDATES})
                if i == 0:
                    continue  # the file's first request is cold: typing starts after it
                latencies.append(seconds)
                cached += response["usage"]["cached_tokens"]
                prompt += response["usage"]["prompt_tokens"]
                candidate_tokens = response["usage"]["candidate_tokens"]
            result[f"endorm_n_batch_{n_batch}"] = {
                "p50_s": percentile(latencies, 50),
                "p99_s": percentile(latencies, 99),
                "hit_ratio": cached / prompt,
                "prompt_tokens": response["usage"]["prompt_tokens"],
                "candidate_tokens": candidate_tokens,
                "rss_mib": daemon.rss_mib(),
            }
        finally:
            daemon.close()
    if peer:
        contexts = [peer.tokenize(p) for p in prefixes]
        candidates = [peer.tokenize(c) for c in EDITOR_CANDIDATES]
        flat = [t for c in candidates for t in c]
        result["decode_candidates_alone_s"] = peer.decode_after(contexts[-1], flat)
        peer.llm.reset()
        peer.rewinding(contexts[0], candidates)
        rewinding = [timed(peer.rewinding, c, candidates) for c in contexts[1:]]
        result["peer_rewinding"] = {"p50_s": percentile(rewinding, 50), "p99_s": percentile(rewinding, 99)}
        naive = [timed(peer.naive, c, candidates) for c in contexts[1 : 1 + args.naive_requests]]
        result["peer_naive"] = {"p50_s": percentile(naive, 50), "requests": len(naive)}
    return result


def client_request(i):
    """An A-like request: ~512 tokens of context, 8 candidates of ~64 tokens; each client its own."""
    words = TEXT.split()
    context = " ".join(words[i % len(words) :] + words) + " " + TEXT * 6
    candidates = [" ".join(words[(i + 7 * j) % len(words) :] + words[: 10]) for j in range(8)]
    return {"format": "raw", "prompt": context, "candidates": candidates}


def scenario_c_d(args, peer):
    result = {}
    for batching in (False, True):
        daemon = Daemon(args.endorm, args.model, args.threads, batching=batching)
        try:
            key = "batching" if batching else "default"
            if not batching:
                result["start_to_healthy_s"] = daemon.start_s
                result["rss_after_load_mib"] = daemon.rss_mib()
            score(daemon.sock, client_request(0))  # warm-up
            tokens, started = 0, time.perf_counter()
            for i in range(args.single_requests):
                tokens += score(daemon.sock, client_request(i))[0]["usage"]["total_tokens"]
            single = tokens / (time.perf_counter() - started)

            failures, totals = [], []
            lock = threading.Lock()

            def client(i):
                try:
                    response, _ = score(daemon.sock, client_request(i))
                    with lock:
                        totals.append(response["usage"]["total_tokens"])
                except Exception as error:  # noqa: BLE001 - every failure is counted and shown
                    with lock:
                        failures.append(str(error))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            concurrent = sum(totals) / (time.perf_counter() - started)
            result[key] = {"single_tok_s": single, "concurrent_tok_s": concurrent, "failed": len(failures),
                           "rss_mib": daemon.rss_mib()}
            if not batching:
                result["rss_after_c_mib"] = daemon.rss_mib()
        finally:
            daemon.close()
    return result


def small_request(i):
    """An editor-sized request: ~200 context tokens, 5 candidates of ~16 tokens; each client its own."""
    words = TEXT.split()
    context = " ".join(words[i % len(words) :] + words) + " " + TEXT + " ".join(words[:22])
    candidates = [" ".join((words[(i + 5 * j) % len(words) :] + words)[:14]) for j in range(5)]
    return {"format": "raw", "prompt": context, "candidates": candidates}


def concurrently(sock, requests):
    """Sends `requests` at once, one client each: (tokens scored, seconds, failures)."""
    failures, totals = [], []
    lock = threading.Lock()

    def client(body):
        try:
            response, _ = score(sock, body)
            with lock:
                totals.append(response["usage"]["total_tokens"])
        except Exception as error:  # noqa: BLE001 - every failure is counted and shown
            with lock:
                failures.append(str(error))

    threads = [threading.Thread(target=client, args=(body,)) for body in requests]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(totals), time.perf_counter() - started, len(failures)


def tiny_request(i):
    """A tiny request: a ~30-token question and 2 answers of ~8 tokens; each client its own."""
    words = TEXT.split()
    context = " ".join((words[(7 * i) % len(words) :] + words)[:22])
    candidates = [" ".join((words[(i + 3 * j) % len(words) :] + words)[:6]) for j in range(2)]
    return {"format": "raw", "prompt": context, "candidates": candidates}


def scenario_e(args, make=small_request):
    """Editor-sized C (F: tiny requests): the 16 requests one after another, then all at once."""
    requests = [make(i) for i in range(args.clients)]
    result = {}
    for batching in (False, True):
        daemon = Daemon(args.endorm, args.model, args.threads, batching=batching)
        try:
            score(daemon.sock, requests[0])  # warm-up
            tokens, started = 0, time.perf_counter()
            for body in requests:
                tokens += score(daemon.sock, body)[0]["usage"]["total_tokens"]
            sequential = tokens / (time.perf_counter() - started)
            tokens, seconds, failed = concurrently(daemon.sock, requests)
            result["batching" if batching else "default"] = {
                "sequential_tok_s": sequential, "concurrent_tok_s": tokens / seconds, "failed": failed,
                "request_tokens": tokens // len(requests), "rss_mib": daemon.rss_mib(),
            }
        finally:
            daemon.close()
    return result


def scenario_h(args):
    """A small request of one client while another's long context (~3,500 tokens) decodes."""
    words = " ".join(f"w{i % 97}" for i in range(1200))
    big = {"format": "raw", "prompt": words, "candidates": [" w1 w2"]}
    small = tiny_request(0)
    daemon = Daemon(args.endorm, args.model, args.threads, n_ctx=4096)
    try:
        score(daemon.sock, small, "editor")  # warm-up
        alone = sorted(score(daemon.sock, small, "editor")[1] for _ in range(5))[2]
        response, big_alone = score(daemon.sock, big, "batch")
        context = response["usage"]["prompt_tokens"]
        during = {}

        def long_one():
            during["big"] = score(daemon.sock, big, "batch")[1]

        thread = threading.Thread(target=long_one)
        thread.start()
        time.sleep(min(3.0, big_alone / 3))
        during["small"] = score(daemon.sock, small, "editor")[1]
        thread.join()
        slices = -(-context // 512)
        return {"context_tokens": context, "slices": slices, "small_alone_s": alone,
                "small_during_s": during["small"], "big_alone_s": big_alone,
                "big_during_s": during["big"], "slice_s": big_alone / slices,
                "target_s": 3 * alone + big_alone / slices}
    finally:
        daemon.close()


def code_tasks(args):
    rows = [json.loads(line) for line in Path(args.code_data).read_text().splitlines() if line.strip()]
    return rows[: args.tasks] if args.tasks else rows


def scenario_g(args):
    """Best-of-n: the reward pass of `endorm eval` and /v1/score over code-dev's tasks, tree off then on."""
    tasks = code_tasks(args)
    result = {"tasks": len(tasks), "completions": sum(len(t["completions"]) for t in tasks)}
    with tempfile.TemporaryDirectory() as scratch:
        for tree in (False, True):
            key = "tree" if tree else "no_tree"
            report = Path(scratch) / f"eval-{key}.json"
            started = time.perf_counter()
            _, peak_mib = run_measured(
                [args.endorm, "eval", "--model", str(args.model), "--threads", str(args.threads),
                 "--data", str(args.code_data), "--limit", str(len(tasks)), "--method", "endo_mean",
                 "--report", str(report), "--fresh", "--quiet", "--prefix-tree", str(tree).lower()]
            )
            wall = time.perf_counter() - started
            method = json.loads(report.read_text())["methods"][0]
            result[f"eval_{key}"] = {"wall_s": wall, "pass_s": method["pass_seconds"], "tokens": method["pass_tokens"],
                                     "auc": method["auc"]["value"], "peak_rss_mib": peak_mib}
    for tree in (False, True):
        key = "tree" if tree else "no_tree"
        daemon = Daemon(args.endorm, args.model, args.threads, prefix_tree=tree)
        try:
            decoded = shared = candidate_tokens = 0
            started = time.perf_counter()
            orders = []
            for task in tasks:
                response, _ = score(daemon.sock, {"format": "raw", "prompt": task["prompt"],
                                                  "candidates": task["completions"], "aggregate": "endo_mean"})
                usage = response["usage"]
                candidate_tokens += usage["candidate_tokens"]
                decoded += usage["decoded_candidate_tokens"]
                shared += usage["shared_candidate_tokens"]
                orders.append(response["order"])
            result[f"score_{key}"] = {"wall_s": time.perf_counter() - started, "candidate_tokens": candidate_tokens,
                                      "decoded_candidate_tokens": decoded, "shared_candidate_tokens": shared,
                                      "rss_mib": daemon.rss_mib(), "orders": orders}
        finally:
            daemon.close()
    result["same_rankings"] = result["score_no_tree"].pop("orders") == result["score_tree"].pop("orders")
    return result


def model_budget_mib(args, peer):
    """Model file + KV cache of the daemon's default context (4096 tokens, f16 K and V), in the
    cells llama.cpp allocates for it: one more than the window (a decode's padding token, see
    src/engine/context.rs), rounded up to a multiple of 256."""
    file_mib = args.model.stat().st_size / 2**20
    if not peer:
        return file_mib, None
    meta = peer.llm.metadata
    arch = meta["general.architecture"]
    layers = int(meta[f"{arch}.block_count"])
    embd = int(meta[f"{arch}.embedding_length"])
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    cells = -(-(4096 + 1) // 256) * 256
    kv_mib = cells * layers * 2 * (embd // heads * kv_heads) * 2 / 2**20
    return file_mib, kv_mib


# --- report -----------------------------------------------------------------------------------


def report(r, args):
    lines = ["| scenario | measure | endorm | llama-cpp-python naive | llama-cpp-python rewinding | target |", "|---|---|---:|---:|---:|---|"]
    fmt = lambda x, unit="s": "—" if x is None else f"{x:.3f} {unit}"
    mib = lambda x: "—" if x is None else f"{x:.0f} MiB"
    file_mib, kv_mib = r["budget"]
    budget = f"≤ {file_mib + kv_mib + 64:.0f} MiB (model {file_mib:.0f} + KV {kv_mib:.0f} + 64)" if kv_mib else ""
    if "A" in r:
        a = r["A"]
        e = a["endorm_n_batch_512"]
        naive, rewind = a.get("peer_naive_s"), a.get("peer_rewinding_s")
        lines.append(f"| A | one cold request (1,024 tokens) | {fmt(e['shared_s'])} | {fmt(naive)} | {fmt(rewind)} | |")
        lines.append(f"| A | vs plain decode of the same tokens ({fmt(e['plain_s'])}) | {e['shared_s'] / e['plain_s']:.2f}× | | | ≤ 1.1× |")
        if naive:
            lines.append(f"| A | speed-up over the peer | | {naive / e['shared_s']:.2f}× | {rewind / e['shared_s']:.2f}× | ≥ 5× naive, > 1× rewinding |")
        lines.append(f"| A | endorm's own naive path | {e['naive_s'] / e['shared_s']:.2f}× slower | | | |")
        e63 = a["endorm_n_batch_63"]
        lines.append(f"| A | n_batch 63 (exact mode): request / plain | {fmt(e63['shared_s'])} / {fmt(e63['plain_s'])} | | | |")
        lines.append(f"| A | peak memory of `endorm bench`, n_batch 512 / 63 | {mib(e['peak_rss_mib'])} / {mib(e63['peak_rss_mib'])} | | | |")
    for model, b in r.get("B", {}).items():
        for n_batch in (512, 63):
            eb = b[f"endorm_n_batch_{n_batch}"]
            peer = b.get("peer_rewinding", {})
            naive_b = b.get("peer_naive", {})
            lines.append(
                f"| B {model} | p50 / p99 latency, n_batch {n_batch} | {fmt(eb['p50_s'])} / {fmt(eb['p99_s'])} | "
                f"{fmt(naive_b.get('p50_s'))} (p50 of {naive_b.get('requests', 0)}) | {fmt(peer.get('p50_s'))} / {fmt(peer.get('p99_s'))} | |"
            )
            lines.append(f"| B {model} | cache hit ratio, n_batch {n_batch} | {eb['hit_ratio']:.3f} | | | |")
            alone = b.get("decode_candidates_alone_s")
            if alone:
                lines.append(f"| B {model} | p50 / decode of the {eb['candidate_tokens']} candidate tokens alone ({fmt(alone)}), n_batch {n_batch} | {eb['p50_s'] / alone:.2f}× | | | ≤ 1.2× |")
            lines.append(f"| B {model} | memory after B, n_batch {n_batch} | {mib(eb['rss_mib'])} | | | |")
    if "C_D" in r:
        c = r["C_D"]
        for key in ("default", "batching"):
            ck = c[key]
            lines.append(
                f"| C | {args.clients} clients vs 1 ({key}) | {ck['concurrent_tok_s']:.0f} vs {ck['single_tok_s']:.0f} tok/s = "
                f"{ck['concurrent_tok_s'] / ck['single_tok_s']:.2f}×, {ck['failed']} failed | | | ≥ 0.9×, 0 failed |"
            )
            lines.append(f"| C | memory after C ({key}) | {mib(ck['rss_mib'])} | | | {budget} |")
        rewind, naive = r.get("A", {}).get("peer_rewinding_s"), r.get("A", {}).get("peer_naive_s")
        if rewind:
            lines.append(f"| C | peer, one request at a time (from A) | | {1024 / naive:.0f} tok/s | {1024 / rewind:.0f} tok/s | |")
    if "H" in r:
        h = r["H"]
        lines.append(f"| H | tiny request alone / during a {h['context_tokens']}-token context ({h['slices']} slices), s | {h['small_alone_s']:.3f} / {h['small_during_s']:.3f} | | | ≤ {h['target_s']:.3f} (3× alone + a slice) |")
        lines.append(f"| H | the long request alone / with the tiny one let in, s | {h['big_alone_s']:.2f} / {h['big_during_s']:.2f} | | | |")
    if "G" in r:
        g = r["G"]
        off, on = g["eval_no_tree"], g["eval_tree"]
        lines.append(f"| G | `endorm eval` reward pass, {g['tasks']} tasks: tokens decoded, tree off / on | {off['tokens']} / {on['tokens']} | | | |")
        lines.append(f"| G | `endorm eval` reward pass, wall s, tree off / on | {off['pass_s']:.1f} / {on['pass_s']:.1f} = **{off['pass_s'] / on['pass_s']:.2f}×** | | | ≥ 1.35× |")
        lines.append(f"| G | `endorm eval` whole run, wall s; peak memory, tree off / on | {off['wall_s']:.1f} / {on['wall_s']:.1f}; {mib(off['peak_rss_mib'])} / {mib(on['peak_rss_mib'])} | | | |")
        lines.append(f"| G | `endorm eval` AUC of endo_mean, tree off / on | {off['auc']:.4f} / {on['auc']:.4f} | | | equal |")
        off, on = g["score_no_tree"], g["score_tree"]
        lines.append(f"| G | /v1/score, {g['completions']} completions: candidate tokens decoded, tree off / on | {off['decoded_candidate_tokens']} / {on['decoded_candidate_tokens']} (of {on['candidate_tokens']}; {on['shared_candidate_tokens']} shared) | | | |")
        lines.append(f"| G | /v1/score, wall s, tree off / on | {off['wall_s']:.1f} / {on['wall_s']:.1f} = **{off['wall_s'] / on['wall_s']:.2f}×** | | | |")
        lines.append(f"| G | /v1/score: memory after, tree off / on; same rankings | {mib(off['rss_mib'])} / {mib(on['rss_mib'])}; {g['same_rankings']} | | | {budget} |")
    for name, size in (("E", "editor-sized"), ("F", "tiny")):
        for key in ("default", "batching") if name in r else ():
            ek = r[name][key]
            lines.append(
                f"| {name} | {args.clients} {size} clients at once vs one after another ({key}, {ek['request_tokens']} tokens a request) | "
                f"{ek['concurrent_tok_s']:.0f} vs {ek['sequential_tok_s']:.0f} tok/s = {ek['concurrent_tok_s'] / ek['sequential_tok_s']:.2f}×, "
                f"{ek['failed']} failed | | | {'≥ 1.5×' if key == 'batching' and name == 'E' else '≥ 0.9×' if key == 'default' else ''} |"
            )
            lines.append(f"| {name} | memory after {name} ({key}) | {mib(ek['rss_mib'])} | | | {budget} |")
    if "C_D" in r:
        c = r["C_D"]
        lines.append(f"| D | resident memory after load | {mib(c['rss_after_load_mib'])} | | {r.get('peer_rss_mib', 0):.0f} MiB after load | {budget} |")
        lines.append(f"| D | start to healthy | {fmt(c['start_to_healthy_s'])} | | {fmt(r.get('peer_load_s'))} (load) | ≤ 1 s |")
    return "\n".join(lines)


def peer_rss_mib():
    status = Path("/proc/self/status").read_text()
    return next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS:")) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endorm", default=str(ROOT / "target/release/endorm"))
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--editor-model", type=Path, action="append", default=[], help="another model for B")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--scenarios", default="A,B,C,E,D", help="which to run (D comes with C)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of A (median)")
    parser.add_argument("--requests", type=int, default=50, help="typed requests of B")
    parser.add_argument("--naive-requests", type=int, default=3, help="B requests the naive peer runs")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of C and E")
    parser.add_argument("--single-requests", type=int, default=3, help="requests of C's single client")
    parser.add_argument("--code-data", type=Path, default=ROOT.parent / "shared/evaldata/code-dev.jsonl",
                        help="G's best-of-n tasks (code-dev.jsonl)")
    parser.add_argument("--tasks", type=int, default=0, help="only G's first N tasks (0: all)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="compare model settings on A, B, C and E (the first is the baseline)")
    args = parser.parse_args()
    wanted = set(args.scenarios.upper().split(","))
    if args.variant:
        variants = [parse_variant(v) for v in args.variant]
        file_mib = args.model.stat().st_size / 2**20
        result = {"machine": machine(), "threads": args.threads, "model": args.model.name,
                  "variants": dict(variants)}

        def save(figures):
            if args.json:
                args.json.write_text(json.dumps({**result, "results": figures}, indent=2) + "\n")

        result["results"] = scenario_variants(args, variants, save)
        print(f"{result['machine']}, {args.threads} threads, {args.model.name}\n")
        print(variants_report(result["results"], f"model file {file_mib:.0f} MiB", args.clients))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return

    results = {"machine": machine(), "threads": args.threads, "model": args.model.name}
    # The daemon scenarios run before the peer is loaded, so its memory does not compete with them.
    if wanted & {"C", "D"}:
        results["C_D"] = scenario_c_d(args, None)
    if "E" in wanted:
        results["E"] = scenario_e(args)
    if "F" in wanted:
        results["F"] = scenario_e(args, tiny_request)
    if "G" in wanted:
        results["G"] = scenario_g(args)
    if "H" in wanted:
        results["H"] = scenario_h(args)
    before = peer_rss_mib()
    peer = peer_or_none(args.model, args.threads, 4096)
    if peer:
        results["peer_rss_mib"] = peer_rss_mib() - before
        results["peer_load_s"] = peer.load_s
    results["budget"] = model_budget_mib(args, peer)
    if "A" in wanted:
        results["A"] = scenario_a(args, peer)
    if "B" in wanted:
        results["B"] = {args.model.name: scenario_b(args, args.model, peer)}
        for model in args.editor_model:
            del peer
            peer = peer_or_none(model, args.threads, 4096)
            results["B"][model.name] = scenario_b(args, model, peer)
    table = report(results, args)
    print(f"{results['machine']}, {args.threads} threads, {args.model.name}\n")
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def machine():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
