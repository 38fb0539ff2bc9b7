"""`endorm.ray.serve` on a real local Ray cluster answers as one daemon does, to real clients.

One cluster for the module (local_ray.py: node address 127.0.0.1, 3 CPUs, its processes without
ENDORM_BIN or endorm on PATH) and, on it, two applications of `endorm.ray.serve:app` behind Serve's
HTTP proxy on 127.0.0.1 (deployed by serve_pool.py, a driver with ENDORM_BIN in its own
environment only, so the binary reaches the replicas through Ray's runtime_env):

- "endorm" at `/`: a bearer token, 1 to 2 replicas of 1 thread, scaled on requests in flight
  (target 1), a health check every second;
- "open" at `/open`: no token (OpenRLHF sends none), 1 replica whose daemon reads a config with
  `queue_depth = 1` (so that a burst gets the daemon's own 503).

Beside them, one `endorm serve --threads 1` on a socket of its own: the single daemon every answer
is compared with. The tests: every route's status, headers and body through the pool equal that
daemon's (errors included); the real clients (the endorm client, the Cohere SDK v1 and v2,
LangChain's CohereRerank, OpenRLHF's reward client) get its values; a burst on "open" gets the
daemon's 503 and `Retry-After` unchanged; under load "endorm" scales to 2 replicas, a replica's
daemon killed with SIGKILL loses no request that the clients retry (the Cohere SDK and the endorm
client each retry a 503 twice by themselves, after `Retry-After`), Serve replaces
that replica, and the pool scales back to 1 when the load stops.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import cohere
import httpx
import pytest
from cohere.errors import UnauthorizedError
from langchain_cohere import CohereRerank

from local_ray import PACKAGE, REPO, LocalRay
from rerank.support import DOCUMENTS, MODEL_NAME, QUERY, Truth
from rerank.test_openrlhf import openrlhf_agent

sys.path.insert(0, str(PACKAGE))
from endorm import Client, EndormError  # noqa: E402  (the client of this working tree)

sys.path.remove(str(PACKAGE))

BIN = Path(os.environ.get("ENDORM_BIN", REPO / "target" / "release" / "endorm"))
MODEL = Path(
    os.environ.get(
        "ENDORM_TEST_MODEL",
        Path.home() / ".cache" / "endorm" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
).expanduser()
TIMEOUT_S = 300
TOKEN = secrets.token_hex(20)
# Response headers that belong to the connection, or that Serve's proxy (uvicorn) sets itself.
CONNECTION_HEADERS = {"date", "server", "content-length", "connection", "keep-alive",
                      "transfer-encoding", "x-request-id"}


def _require(path: Path, what: str) -> None:
    if path.exists():
        return
    message = f"no {what} at {path}"
    if os.environ.get("ENDORM_REQUIRE_ALL") == "1":
        pytest.fail(message)
    pytest.skip(message + " (set ENDORM_BIN / ENDORM_TEST_MODEL)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(pid: int) -> Optional[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _running(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def _metrics(pid: int) -> Dict[str, float]:
    """A daemon's /metrics, read on its socket (from its command line): each series' value summed
    over its labels, requests counted on the load's routes only (not Serve's health checks or
    these reads)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    sock = argv[argv.index("--socket") + 1]
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=10) as http:
        text = http.get("http://endorm/metrics").text
    sums: Dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("endorm_requests_total") and not any(
                f'route="{route}"' in line for route in ("/v1/score", "/v2/rerank")):
            continue
        name, value = line.split("{")[0].split()[0], line.rsplit(" ", 1)[1]
        sums[name] = sums.get(name, 0.0) + float(value)
    return sums


@dataclass
class Pool:
    url: str  # the "endorm" application (token)
    open_url: str  # the "open" application (no token)
    tmp: Path
    single: httpx.Client  # the single daemon, on its socket
    open_config: str
    cluster: LocalRay

    def check_loopback(self) -> None:
        """Everything the cluster listens on (Serve's proxy, replicas, daemons) is loopback."""
        listening = self.cluster.listening_addresses()
        assert listening and listening <= {"127.0.0.1", "::1"}, listening

    def daemons(self, app: str = "endorm") -> Dict[int, int]:
        """The live daemons of an application's replicas: {daemon pid: replica (actor) pid}."""
        found = {}
        prefix = f"{self.tmp / 't'}/endorm-ray-"
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if argv[1:2] != ["serve"] or not any(a.startswith(prefix) for a in argv):
                continue
            is_open = self.open_config in argv
            if (app == "open") == is_open and _running(int(proc.name)):
                found[int(proc.name)] = ppid
        return found

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 120) -> float:
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not within {timeout:.0f} s: {what} (daemons: "
                                     f"{self.daemons()})")
            time.sleep(0.2)
        return time.monotonic() - started


def _driver(cluster: LocalRay, tmp: Path, args: List[str], name: str) -> str:
    env = cluster.driver_env(ENDORM_BIN=str(BIN))
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("serve_pool.py")),
                                 *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{text[-6000:]}"
    return text


def _single_daemon(tmp: Path) -> Tuple[subprocess.Popen, httpx.Client]:
    """`endorm serve --threads 1` on the default model, as the pool's replicas run it."""
    (tmp / "single.toml").write_text("")
    sock = str(tmp / "single.sock")
    proc = subprocess.Popen(
        [str(BIN), "serve", "--socket", sock, "--config", str(tmp / "single.toml"), "--model",
         str(MODEL), "--threads", "1", "--exit-on-eof"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=open(tmp / "single.log", "wb"))
    http = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://endorm",
                        timeout=120)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if http.get("/health").json().get("status") == "ok":
                return proc, http
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"the single daemon did not start: {(tmp / 'single.log').read_text()}")


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    _require(BIN, "endorm binary")
    _require(MODEL, "model")
    with tempfile.TemporaryDirectory(prefix="endorm-serve-test-", dir="/tmp") as name:
        tmp = Path(name)
        (tmp / "t").mkdir()
        open_config = str(tmp / "open.toml")
        Path(open_config).write_text("[server]\nqueue_depth = 1\n")
        single, http = _single_daemon(tmp)
        common = {"model": str(MODEL), "threads": 1, "health_check_period_s": 1}
        apps = [
            {"name": "endorm", "route_prefix": "/", "args": {
                **common, "token": TOKEN, "min_replicas": 1, "max_replicas": 2,
                "target_ongoing_requests": 1,
                "autoscaling": {"upscale_delay_s": 1, "downscale_delay_s": 5,
                                "look_back_period_s": 2, "metrics_interval_s": 0.5}}},
            {"name": "open", "route_prefix": "/open", "args": {
                **common, "auth": "none", "config": open_config}},
        ]
        try:
            with LocalRay(tmp, cpus=3, env={"TMPDIR": str(tmp / "t")}) as cluster:
                port = _free_port()
                started = time.monotonic()
                _driver(cluster, tmp, ["deploy", str(port), json.dumps(apps)], "deploy")
                print(f"deployed in {time.monotonic() - started:.1f} s")
                url = f"http://127.0.0.1:{port}"
                up = Pool(url, url + "/open", tmp, http, open_config, cluster)
                up.check_loopback()
                yield up
                # Serve stops its replicas gracefully: their daemons stop and their directories go.
                _driver(cluster, tmp, ["shutdown"], "shutdown")
                assert not list((tmp / "t").iterdir())
                assert cluster.node_addresses() == {"127.0.0.1"}
        finally:
            http.close()
            assert single.stdin is not None
            single.stdin.close()
            single.wait(timeout=30)


def _without_timings(value: Any) -> Any:
    """A body without what depends on the run: timings and prefix-cache hits."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("timings", "cached_tokens")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


ROUTES: List[Tuple[str, str, Any]] = [
    ("GET", "/health", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/score", {"prompt": QUERY, "candidates": DOCUMENTS}),
    ("POST", "/v1/score", {"format": "raw", "prompt": "def add(a, b):\n",
                           "candidates": ["    return a + b\n", "    return a - b\n"],
                           "return_tokens": True, "aggregate": "endo_mean"}),
    ("POST", "/v1/rerank", {"model": MODEL_NAME, "query": QUERY, "documents": DOCUMENTS,
                            "top_n": 2, "return_documents": True}),
    ("POST", "/v2/rerank", {"model": MODEL_NAME, "query": QUERY, "documents": DOCUMENTS}),
    ("POST", "/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True}),
    ("POST", "/get_reward", {"query": [f"Q: {QUERY}\nA: Paris.", f"Q: {QUERY}\nA: London."],
                             "prompts": [f"Q: {QUERY}\nA:", f"Q: {QUERY}\nA:"]}),
    ("POST", "/tokenize", {"content": "Hello world", "with_pieces": True}),
    # Errors, each with the daemon's status, body and headers.
    ("POST", "/v1/score", b'{"prompt": "x", "candidates": '),
    ("POST", "/v1/score", {"prompt": "x", "candidates": ["y"], "label": 1}),
    ("POST", "/v1/score", {"prompt": "x", "candidates": []}),
    ("POST", "/v1/score", {"model": "nope", "prompt": "x", "candidates": ["y"]}),
    ("POST", "/v1/score", {"format": "raw", "prompt": "word " * 5000, "candidates": ["end"]}),
    ("GET", "/v1/score", None),
    ("GET", "/nope", None),
]


def _send(http: httpx.Client, method: str, path: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    if content is not None:
        headers["content-type"] = "application/json"
    return http.request(method, path, content=content, headers=headers)


@pytest.mark.parametrize("method,path,body", ROUTES,
                         ids=[f"{m} {p} {i}" for i, (m, p, _) in enumerate(ROUTES)])
def test_a_route_answers_as_the_single_daemon(pool: Pool, method: str, path: str,
                                              body: Any) -> None:
    with httpx.Client(base_url=pool.url, timeout=120) as http:
        got = _send(http, method, path, body, authorization=f"Bearer {TOKEN}")
    want = _send(pool.single, method, path, body)
    assert got.status_code == want.status_code, got.text
    for name, value in want.headers.items():
        if name not in CONNECTION_HEADERS:
            assert got.headers.get(name) == value, name
    assert _without_timings(got.json()) == _without_timings(want.json())


def test_the_token_is_required(pool: Pool) -> None:
    with httpx.Client(base_url=pool.url, timeout=120) as http:
        for headers in ({}, {"authorization": "Bearer " + "x" * 40}, {"authorization": TOKEN}):
            answer = http.get("/health", headers=headers)
            assert answer.status_code == 401, headers
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["error"]["code"] == "invalid_token"
        assert http.get("/health", headers={"authorization": f"bearer   {TOKEN}"}).is_success
    co = cohere.ClientV2(base_url=pool.url, api_key="not-the-token", timeout=120)
    with pytest.raises(UnauthorizedError):
        co.rerank(model=MODEL_NAME, query=QUERY, documents=DOCUMENTS)


def _truth(pool: Pool) -> Truth:
    scored = pool.single.post("/v1/score", json={"prompt": QUERY, "candidates": DOCUMENTS}).json()
    return Truth.of([r["endo"] for r in scored["results"]], scored["order"])


def test_real_clients_get_the_single_daemons_values(pool: Pool) -> None:
    truth = _truth(pool)
    single = pool.single.post("/v1/score", json={"prompt": QUERY, "candidates": DOCUMENTS}).json()
    with Client(url=pool.url, token=TOKEN, timeout=120) as client:
        scored = client.score(candidates=DOCUMENTS, prompt=QUERY)
        assert [r.endo for r in scored.results] == [r["endo"] for r in single["results"]]
        assert scored.order == single["order"]
        ranked = client.rerank(query=QUERY, documents=DOCUMENTS)
    want = pool.single.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS,
                                                "return_documents": True}).json()
    assert [(r.index, r.relevance_score) for r in ranked.results] == \
        [(r["index"], r["relevance_score"]) for r in want["results"]]

    v1 = cohere.Client(base_url=pool.url, api_key=TOKEN, timeout=120)
    response = v1.rerank(model=MODEL_NAME, query=QUERY, documents=DOCUMENTS, top_n=3)
    truth.check([(r.index, r.relevance_score) for r in response.results], 3)
    v2 = cohere.ClientV2(base_url=pool.url, api_key=TOKEN, timeout=120)
    response = v2.rerank(model=MODEL_NAME, query=QUERY, documents=DOCUMENTS)
    truth.check([(r.index, r.relevance_score) for r in response.results], len(DOCUMENTS))
    reranker = CohereRerank(base_url=pool.url, cohere_api_key=TOKEN, model=MODEL_NAME)
    ranked_lc = reranker.rerank(DOCUMENTS, QUERY, top_n=None)
    truth.check([(r["index"], r["relevance_score"]) for r in ranked_lc], len(DOCUMENTS))


def test_openrlhf_gets_the_single_daemons_rewards(pool: Pool) -> None:
    """OpenRLHF's `_fetch_rewards_via_http` (no token) on the "open" application."""
    import asyncio

    agent = openrlhf_agent()
    executor = agent.SingleTurnAgentExecutor(pool.open_url + "/get_reward")
    prompt = f"<|im_start|>user\n{QUERY}<|im_end|>\n<|im_start|>assistant\n"
    queries = [f"{prompt}Paris is the capital of France.<|im_end|>",
               f"{prompt}I think it is London.<|im_end|>"]
    answers = asyncio.run(executor._fetch_rewards_via_http(queries, [prompt] * 2, ["", ""]))
    want = pool.single.post("/get_reward", json={"query": queries, "prompts": [prompt] * 2,
                                                 "labels": ["", ""]}).json()
    assert answers == [want]
    assert want["rewards"][0] > want["rewards"][1]


def test_a_burst_gets_the_daemons_own_503(pool: Pool) -> None:
    """"open"'s daemon queues 1 request (2 from new clients): the rest of a burst of 8 get its
    503 `queue_full` with `Retry-After`, through the pool unchanged."""
    body = {"prompt": QUERY, "candidates": DOCUMENTS}
    answers: List[httpx.Response] = []

    def one() -> None:
        with httpx.Client(base_url=pool.open_url, timeout=120) as http:
            answers.append(http.post("/v1/score", json=body))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 1, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["retry-after"] == "1"
            assert answer.json()["error"]["code"] == "queue_full"
            assert answer.json()["error"]["type"] == "server_error"


@dataclass
class Load:
    """Clients scoring in a loop until stopped: what they got, and the 503s they retried."""

    pool: Pool
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reranks: List[List[Tuple[int, float]]] = field(default_factory=list)
    scores: List[List[float]] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    # The Retry-After of each 503 the Cohere SDK met, None for each the endorm client retried.
    unavailable: List[Optional[str]] = field(default_factory=list)
    other_5xx: List[int] = field(default_factory=list)  # any other 5xx status a client met

    def cohere(self) -> None:
        def seen(response: httpx.Response) -> None:
            with self.lock:
                if response.status_code == 503:
                    self.unavailable.append(response.headers.get("retry-after"))
                elif response.status_code >= 500:
                    self.other_5xx.append(response.status_code)

        http = httpx.Client(timeout=120, event_hooks={"response": [seen]})
        co = cohere.ClientV2(base_url=self.pool.url, api_key=TOKEN, httpx_client=http)
        while not self.stop.is_set():
            try:  # the SDK retries a 503 twice, after its Retry-After
                response = co.rerank(model=MODEL_NAME, query=QUERY, documents=DOCUMENTS)
            except Exception as e:  # a request lost: the test fails with it
                with self.lock:
                    self.failures.append(f"cohere: {e!r}")
                continue
            with self.lock:
                self.reranks.append([(r.index, r.relevance_score) for r in response.results])

    def endorm(self) -> None:
        # The client retries a 503 or a lost connection by itself (max_retries=2, after
        # Retry-After), and logs each retry: that log is how the test sees them.
        with Client(url=self.pool.url, token=TOKEN, timeout=120) as client:
            while not self.stop.is_set():
                try:
                    scored = client.score(prompt=QUERY, candidates=DOCUMENTS)
                except EndormError as e:  # a request lost: the test fails with it
                    with self.lock:
                        self.failures.append(f"endorm: {e!r}")
                    continue
                with self.lock:
                    self.scores.append([r.endo for r in scored.results])

    def retried(self, record: logging.LogRecord) -> bool:
        """A filter of a handler on the endorm client's logger: counts its retries of a 503."""
        if record.getMessage().startswith("endorm: 503 from"):
            with self.lock:
                self.unavailable.append(None)
        return True


def test_the_pool_scales_and_a_killed_daemon_loses_nothing(pool: Pool) -> None:
    truth = _truth(pool)
    assert len(pool.daemons()) == 1, pool.daemons()
    load = Load(pool)
    client_log = logging.getLogger("endorm")
    client_log.setLevel(logging.INFO)
    counter = logging.StreamHandler(io.StringIO())
    counter.addFilter(load.retried)
    client_log.addHandler(counter)
    workers = [threading.Thread(target=w) for w in (load.cohere, load.cohere, load.endorm,
                                                     load.endorm)]
    for worker in workers:
        worker.start()
    try:
        # Four clients, a target of one request per replica: Serve adds the second replica.
        up = pool.wait_for("a second replica", lambda: len(pool.daemons()) == 2)
        print(f"scaled to 2 replicas in {up:.1f} s")
        # Both replicas have scored (the new one is routed to once Serve has it running); the
        # victim is a daemon with a request running at that moment (its /metrics say so).
        running: List[int] = []

        def one_running() -> bool:
            try:
                metrics = {pid: _metrics(pid) for pid in pool.daemons()}
            except (OSError, ValueError, httpx.HTTPError):  # a replica starting or stopping
                return False
            served = [m.get("endorm_requests_total", 0) > 0 for m in metrics.values()]
            running[:] = [p for p, m in metrics.items() if m.get("endorm_queue_running", 0) >= 1]
            return len(metrics) == 2 and all(served) and bool(running)

        pool.wait_for("both replicas scored, one scoring now", one_running)
        pool.check_loopback()
        before = len(load.reranks) + len(load.scores)
        victim = running[0]
        replica = pool.daemons()[victim]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # Serve's health check finds the daemon gone, stops its replica and starts another.
        pool.wait_for("the killed daemon's replica stopped", lambda: not _running(replica))
        pool.wait_for("two replicas again",
                      lambda: len(pool.daemons()) == 2 and victim not in pool.daemons())
        print(f"replaced in {time.monotonic() - killed_at:.1f} s")
        pool.check_loopback()
        time.sleep(3)
    finally:
        load.stop.set()
        for worker in workers:
            worker.join(timeout=TIMEOUT_S)
        client_log.removeHandler(counter)
    print(f"{len(load.reranks) + len(load.scores)} requests answered, {len(load.unavailable)} "
          f"503s retried, {len(load.failures)} lost, other 5xx: {load.other_5xx}")
    assert load.failures == []
    assert load.other_5xx == []  # only the pool's own 503s, never Serve's 500 for a dead replica
    assert len(load.reranks) + len(load.scores) > before  # the load went on around the kill
    for ranked in load.reranks:
        truth.check(ranked, len(DOCUMENTS))
    for endo in load.scores:
        assert endo == truth.endo
    # The clients met the dead daemon (its requests in flight, and those sent to its replica
    # before Serve's health check) and retried.
    assert load.unavailable, "no request met the killed daemon"
    assert set(load.unavailable) <= {"1", None}
    # No load: back to one replica after downscale_delay_s.
    down = pool.wait_for("one replica again", lambda: len(pool.daemons()) == 1)
    print(f"scaled to 1 replica in {down:.1f} s")
