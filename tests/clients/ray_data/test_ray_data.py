"""`endorm.ray` on a real local Ray cluster gives what `endorm score` gives on the same JSONL.

One cluster for the module (local_ray.py: node address 127.0.0.1, 2 CPUs, in a child process
whose environment has neither ENDORM_BIN nor endorm on PATH). On it, as separate drivers bounded by
a timeout: docs/SCALE.md's Ray Data script, extracted from the doc as written, with ENDORM_BIN in
the driver's environment only; and score_with_ray.py, EndormScorer with map_batches on 2 actors.
Every line must come back in input order with the same id, the same scores (exactly: same binary,
same model, same threads) and the same errors as `endorm score --threads 1`. Beside them: a killed
actor's daemon exits, (without Ray) a batch keeps every row's fields and a dead daemon raises, and
the pool's sizes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from local_ray import PACKAGE, REPO, LocalRay

BIN = Path(os.environ.get("ENDORM_BIN", REPO / "target" / "release" / "endorm"))
MODEL = Path(
    os.environ.get(
        "ENDORM_TEST_MODEL",
        Path.home() / ".cache" / "endorm" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
).expanduser()
SCALE_MD = REPO / "docs" / "SCALE.md"
MARKER = "<!-- tests/clients/ray_data/test_ray_data.py runs the next block as it is written here -->"
TIMEOUT_S = 300

# Successes and errors mixed in every block of three (score_with_ray.py cuts the file in 4 blocks).
LINES: List[Dict[str, Any]] = [
    {"id": "chat", "prompt": "What is the capital of France?", "candidates": ["Paris.", "London."]},
    {"id": "tokens", "prompt": "Say hi.", "candidates": ["Hi!", "Go away."], "return_tokens": True},
    {"id": "bad-aggregate", "prompt": "x", "candidates": ["y"], "aggregate": "bogus"},
    {"id": "messages", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "2+2?"}],
     "candidates": ["4", "5", "four"], "aggregate": "endo_mean"},
    {"id": "raw", "format": "raw", "prompt": "def add(a, b):\n",
     "candidates": ["    return a + b\n", "    return a - b\n"], "terminal": True,
     "aggregate": "logprob"},
    {"id": "unknown-field", "prompt": "x", "candidates": ["y"], "label": 1},
    {"id": "principle", "prompt": "Name a color.", "candidates": ["Blue.", "Seven."],
     "principle": "Answer correctly.", "alpha": 0.5, "aggregate": "logprob_mean"},
    {"id": "empty", "prompt": "x", "candidates": []},
    {"id": "max-tokens", "prompt": "Tell me a story.",
     "candidates": ["Once upon a time there was a fox."], "max_candidate_tokens": 3},
    {"id": "too-long", "format": "raw", "prompt": "word " * 5000, "candidates": ["end"]},
    # `endorm score` scores every line on its one model, whatever `model` says.
    {"id": "other-model", "model": "nope", "prompt": "x", "candidates": ["y"]},
    {"id": "chat-again", "prompt": "What is the capital of France?",
     "candidates": ["Paris.", "Lyon."]},
]


def _require(path: Path, what: str) -> None:
    if path.exists():
        return
    message = f"no {what} at {path}"
    if os.environ.get("ENDORM_REQUIRE_ALL") == "1":
        pytest.fail(message)
    pytest.skip(message + " (set ENDORM_BIN / ENDORM_TEST_MODEL)")


def _comparable(line: Dict[str, Any]) -> Dict[str, Any]:
    """A line without what depends on the run: timings, and the prefix-cache hits (each actor's
    daemon has its own cache). The wording around serde's message on a request of the wrong
    shape differs too (the daemon reads a body, `endorm score` a line)."""
    line = json.loads(json.dumps(line))
    line.pop("timings", None)
    line.get("usage", {}).pop("cached_tokens", None)
    error = line.get("error")
    if error:
        message = re.sub(r"^(invalid request body|not a /v1/score request): ", "", error["message"])
        error["message"] = re.sub(r" at line \d+ column \d+$", "", message)
    return line


def _read(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def documented_script() -> str:
    """The Python block after MARKER in docs/SCALE.md, exactly as written there."""
    doc = SCALE_MD.read_text()
    assert doc.count(MARKER) == 1, f"{SCALE_MD} must hold the marker once: {MARKER}"
    after = doc.split(MARKER, 1)[1]
    match = re.match(r"\s*```python\n(.*?)\n```\n", after, re.S)
    assert match, "the marker must be followed by a ```python block"
    return match.group(1) + "\n"


class Run:
    """The module's cluster, its input file and `endorm score`'s output for it."""

    def __init__(self, tmp: Path, cluster: LocalRay, requests: Path, expected: List[Dict]) -> None:
        self.tmp, self.cluster, self.requests, self.expected = tmp, cluster, requests, expected

    def driver(self, args: List[str], env: Dict[str, str], name: str) -> float:
        """Runs a driver to completion (its own session, killed on a timeout); its seconds.
        Meanwhile, every half second, what the cluster (actors and daemons included) listens on
        must be loopback."""
        log_path = self.tmp / f"{name}.log"
        started = time.monotonic()
        listening = set()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, cwd=self.tmp)
            try:
                while proc.poll() is None and time.monotonic() - started < TIMEOUT_S:
                    listening |= self.cluster.listening_addresses()
                    time.sleep(0.5)
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log_text = log_path.read_text(errors="replace")[-6000:]
        assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{log_text}"
        assert listening and listening <= {"127.0.0.1", "::1"}, listening
        return time.monotonic() - started

    def check(self, got_path: Path) -> None:
        got = _read(got_path)
        assert [line["id"] for line in got] == [line["id"] for line in LINES]
        assert sum("error" in line for line in self.expected) == 4  # the test exercises errors
        for want, have in zip(self.expected, got):
            assert _comparable(have) == _comparable(want), want["id"]


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    _require(BIN, "endorm binary")
    _require(MODEL, "model")
    with tempfile.TemporaryDirectory(prefix="endorm-ray-test-", dir="/tmp") as name:
        tmp = Path(name)
        requests = tmp / "in.jsonl"
        requests.write_text("".join(json.dumps(line) + "\n" for line in LINES))
        expected_path = tmp / "score.jsonl"
        subprocess.run(
            [str(BIN), "score", "--model", str(MODEL), "--threads", "1", "--quiet",
             "--input", str(requests), "--output", str(expected_path)],
            check=False, timeout=TIMEOUT_S,  # exits 1: some lines are errors
        )
        # The actors' private directories go under the cluster's own TMPDIR, checked empty after.
        actor_tmp = tmp / "t"
        actor_tmp.mkdir()
        with LocalRay(tmp, cpus=2, env={"TMPDIR": str(actor_tmp)}) as cluster:
            # The actors cannot find endorm by themselves: only the drivers are told.
            assert "ENDORM_BIN" not in cluster.env
            assert shutil.which("endorm", path=cluster.env.get("PATH")) is None
            yield Run(tmp, cluster, requests, _read(expected_path))
            # Ray kept to loopback: the node registered under 127.0.0.1 and nothing else.
            assert cluster.node_addresses() == {"127.0.0.1"}
        # The actors' daemons stopped with them and their directories are gone.
        assert not list(actor_tmp.iterdir())


def test_the_documented_script_matches_endorm_score(run: Run) -> None:
    script = run.tmp / "score_ray.py"
    script.write_text(documented_script())
    out = run.tmp / "doc.jsonl"
    seconds = run.driver(
        [str(script), str(run.requests), str(MODEL), str(out)],
        run.cluster.driver_env(ENDORM_BIN=str(BIN)), "score_ray",
    )
    print(f"the documented script: {seconds:.1f} s")
    run.check(out)


def test_the_scorer_on_two_actors_matches_endorm_score(run: Run) -> None:
    out = run.tmp / "two-actors.jsonl"
    seconds = run.driver(
        [str(Path(__file__).with_name("score_with_ray.py")), str(run.requests), str(out),
         "--model", str(MODEL), "--binary", str(BIN), "--actors", "2"],
        run.cluster.driver_env(), "score_with_ray",
    )
    print(f"two actors: {seconds:.1f} s")
    run.check(out)


def test_the_pool_leaves_a_cpu_for_the_reads() -> None:
    sys.path.insert(0, str(PACKAGE))
    try:
        from endorm.ray import pool_shape
    finally:
        sys.path.remove(str(PACKAGE))
    assert pool_shape([2]) == (1, 1)  # the example that hung: 2 actors of 1 CPU on 2 CPUs
    assert pool_shape([32]) == (7, 4)  # and 8 of 4 on 32
    assert pool_shape([8, 8, 8, 8]) == (7, 4)
    assert pool_shape([1, 8]) == (2, 4)  # the small node keeps the free CPU
    assert pool_shape([4], threads=1) == (3, 1)
    assert pool_shape([3]) == (1, 2)
    with pytest.raises(ValueError, match="ray-project/ray#44687"):
        pool_shape([2], threads=1, actors=2)
    with pytest.raises(ValueError, match="one node's"):
        pool_shape([4, 4], threads=6)
    with pytest.raises(ValueError, match="1 CPU"):
        pool_shape([1])


def _env(**extra: str) -> Dict[str, str]:
    """This environment with the package under test first on PYTHONPATH."""
    path = [str(PACKAGE), *filter(None, [os.environ.get("PYTHONPATH")])]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), **extra)


def test_a_killed_actor_takes_its_daemon_along() -> None:
    """The daemon's stdin is a pipe from the actor: SIGKILL the actor and the daemon exits."""
    _require(BIN, "endorm binary")
    _require(MODEL, "model")
    script = (
        "import sys, time\n"
        "from endorm.ray import EndormScorer\n"
        "scorer = EndormScorer(model=sys.argv[1], binary=sys.argv[2])\n"
        "print(scorer._daemon.pid, scorer._daemon.dir, flush=True)\n"
        "time.sleep(300)\n"
    )
    actor = subprocess.Popen([sys.executable, "-c", script, str(MODEL), str(BIN)],
                             stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert actor.stdout is not None
        daemon_pid, directory = actor.stdout.readline().split()
        assert os.stat(directory).st_mode & 0o777 == 0o700
        os.kill(actor.pid, signal.SIGKILL)
        actor.wait()
        deadline = time.monotonic() + 60
        while _running(int(daemon_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(int(daemon_pid)), "endorm serve outlived its killed actor"
    finally:
        if actor.poll() is None:
            actor.kill()
            actor.wait()
    # A killed actor cleans nothing up: its directory stays, without the socket.
    assert not Path(directory, "endorm.sock").exists()
    shutil.rmtree(directory)


def _running(pid: int) -> bool:
    """Whether `pid` is alive (a zombie, dead but not yet reaped by init, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_batch_keeps_every_row_and_a_dead_daemon_raises() -> None:
    """Without Ray: a scored row and an error row in one batch both come back whole, and a batch
    after the daemon died raises instead of turning its rows into errors or dropping them."""
    _require(BIN, "endorm binary")
    _require(MODEL, "model")
    sys.path.insert(0, str(PACKAGE))
    try:
        import pyarrow as pa

        from endorm.ray import EndormScorer, drop_nulls
    finally:
        sys.path.remove(str(PACKAGE))
    scorer = EndormScorer(model=str(MODEL), binary=str(BIN), serve_args=["--threads", "1"])
    directory = scorer._daemon.dir
    try:
        batch = pa.Table.from_pylist([LINES[0], LINES[7]])  # chat, then no candidates
        rows = [drop_nulls(row) for row in scorer(batch).to_pylist()]
        assert [row["id"] for row in rows] == ["chat", "empty"]
        assert len(rows[0]["results"]) == 2 and "error" not in rows[0]
        assert rows[1]["error"]["code"] == "invalid_request" and "results" not in rows[1]
        with pytest.raises(TypeError, match="batch_format"):
            scorer(batch.to_pandas())
        proc = scorer._daemon.proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with pytest.raises(RuntimeError, match="endorm serve exited"):
            scorer(batch)
    finally:
        scorer.close()
    assert not os.path.exists(directory)
