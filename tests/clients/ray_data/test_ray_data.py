"""`endorm.ray` on a real local Ray cluster gives what `endorm score` gives on the same JSONL.

score_with_ray.py runs Ray (node address 127.0.0.1, 2 CPUs) in a child process bounded by a timeout,
2 actors, one `endorm serve` each on a private socket; `endorm score` scores the same file. Every
line must come back in input order with the same id, the same scores (exactly: same binary, same
model, same threads) and the same errors. Beside it: a killed actor's daemon exits, and (without
Ray) a batch keeps every row's fields and a dead daemon raises.
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
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("ENDORM_BIN", REPO / "target" / "release" / "endorm"))
MODEL = Path(
    os.environ.get(
        "ENDORM_TEST_MODEL",
        Path.home() / ".cache" / "endorm" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
).expanduser()
# The package under test from this working tree, for the driver and (through the environment
# Ray's workers inherit) the actors.
PACKAGE = REPO / "plugins" / "python" / "src"
TIMEOUT_S = 300

# Successes and errors mixed in every block of three (the script cuts the file into 4 blocks).
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


def test_ray_data_matches_endorm_score() -> None:
    _require(BIN, "endorm binary")
    _require(MODEL, "model")
    with tempfile.TemporaryDirectory(prefix="endorm-ray-test-", dir="/tmp") as tmp:
        requests = Path(tmp, "in.jsonl")
        requests.write_text("".join(json.dumps(line) + "\n" for line in LINES))
        expected_path, got_path = Path(tmp, "score.jsonl"), Path(tmp, "ray.jsonl")
        subprocess.run(
            [str(BIN), "score", "--model", str(MODEL), "--threads", "1", "--quiet",
             "--input", str(requests), "--output", str(expected_path)],
            check=False, timeout=TIMEOUT_S,  # exits 1: some lines are errors
        )

        # The actors' private directories go under this run's own TMPDIR, checked empty after.
        actor_tmp = Path(tmp, "t")
        actor_tmp.mkdir()
        env = _env(TMPDIR=str(actor_tmp))
        log_path = Path(tmp, "ray.log")
        started = time.monotonic()
        with open(log_path, "wb") as log:
            # Its own session: on a timeout the driver and everything Ray started go together.
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("score_with_ray.py")),
                 str(requests), str(got_path), "--model", str(MODEL), "--binary", str(BIN),
                 "--actors", "2", "--ray-dir", str(Path(tmp, "ray"))],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
            try:
                proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log_text = log_path.read_text(errors="replace")[-6000:]
        assert proc.returncode == 0, f"Ray run failed ({proc.returncode}):\n{log_text}"
        print(f"Ray run: {time.monotonic() - started:.1f} s")

        expected, got = _read(expected_path), _read(got_path)
        assert [line["id"] for line in got] == [line["id"] for line in LINES]
        assert sum("error" in line for line in expected) == 4  # the test exercises errors
        for want, have in zip(expected, got):
            assert _comparable(have) == _comparable(want), want["id"]
        # The actors' daemons stopped with them and their directories are gone.
        assert not list(actor_tmp.iterdir())
        # Ray kept to loopback: the node registered under 127.0.0.1 and nothing else.
        gcs = Path(tmp, "ray", "session_latest", "logs", "gcs_server.out").read_text()
        assert set(re.findall(r"node_address=(\S+)", gcs)) == {"127.0.0.1"}


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
        "print(scorer._proc.pid, scorer._dir, flush=True)\n"
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
    try:
        batch = pa.Table.from_pylist([LINES[0], LINES[7]])  # chat, then no candidates
        rows = [drop_nulls(row) for row in scorer(batch).to_pylist()]
        assert [row["id"] for row in rows] == ["chat", "empty"]
        assert len(rows[0]["results"]) == 2 and "error" not in rows[0]
        assert rows[1]["error"]["code"] == "invalid_request" and "results" not in rows[1]
        with pytest.raises(TypeError, match="batch_format"):
            scorer(batch.to_pandas())
        assert scorer._proc is not None
        os.kill(scorer._proc.pid, signal.SIGKILL)
        scorer._proc.wait()
        with pytest.raises(RuntimeError, match="endorm serve exited"):
            scorer(batch)
    finally:
        scorer.close()
    assert not os.path.exists(scorer._dir)
