"""The real daemon on loopback TCP for the rerank and reward client tests.

`daemon` serves with a bearer token (the default); `open_daemon` with `[server] auth = "none"`, as
OpenRLHF needs. Each is `target/release/endorm serve --listen 127.0.0.1:PORT` on a random free port
with an empty config, so the user's own config does not leak in; it stops with the session.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from .support import QUERY, DOCUMENTS, Endorm, Truth

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("ENDORM_BIN", REPO / "target" / "release" / "endorm"))
MODEL = Path(
    os.environ.get(
        "ENDORM_TEST_MODEL",
        Path.home() / ".cache" / "endorm" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
).expanduser()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require(path: Path, what: str) -> None:
    if path.exists():
        return
    message = f"no {what} at {path}"
    if os.environ.get("ENDORM_REQUIRE_ALL") == "1":
        pytest.fail(message)
    pytest.skip(message + " (set ENDORM_BIN / ENDORM_TEST_MODEL)")


def _start(tmp: str, env: dict[str, str]) -> tuple[subprocess.Popen, Endorm]:
    """`endorm serve` on a free port, healthy; another process may take the port first (retried)."""
    log_path = Path(tmp, "serve.log")
    for attempt in range(3):
        port = _free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(BIN), "serve", "--socket", os.path.join(tmp, "e.sock"), "--exit-on-eof",
                 "--listen", f"127.0.0.1:{port}", "--model", str(MODEL),
                 "--config", os.path.join(tmp, "endorm.toml")],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log, env=env)
        daemon = Endorm(f"http://127.0.0.1:{port}", env.get("ENDORM_TOKEN"), log_path)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if daemon.call("/health")["status"] == "ok":
                    return proc, daemon
            except (OSError, ValueError):  # not listening yet (URLError is an OSError)
                pass
            time.sleep(0.2)
        log_text = log_path.read_text(errors="replace")
        if proc.poll() is None:
            _stop(proc)
            pytest.fail(f"endorm serve did not become healthy in 120 s: {log_text}")
        if attempt == 2 or "address" not in log_text.lower():
            pytest.fail(f"endorm serve exited {proc.returncode}: {log_text}")
    raise AssertionError("unreachable")


def _stop(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.close()  # --exit-on-eof: the daemon stops
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _serve(config: str, token: str | None) -> Iterator[Endorm]:
    _require(BIN, "endorm binary")
    _require(MODEL, "model")
    with tempfile.TemporaryDirectory(prefix="endorm-", dir="/tmp") as tmp:
        Path(tmp, "endorm.toml").write_text(config)
        env = {k: v for k, v in os.environ.items() if k not in ("ENDORM_TOKEN", "ENDORM_SOCKET")}
        if token is not None:
            env["ENDORM_TOKEN"] = token  # not --token, which other users could read in ps
        proc, daemon = _start(tmp, env)
        try:
            yield daemon
        finally:
            _stop(proc)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Endorm]:
    """The daemon as a user runs it: loopback TCP, every request needs the bearer token."""
    yield from _serve("", secrets.token_hex(16))  # the daemon wants 32 characters or more


@pytest.fixture(scope="session")
def open_daemon() -> Iterator[Endorm]:
    """The daemon as an OpenRLHF run needs it: `[server] auth = "none"`."""
    yield from _serve('[server]\nauth = "none"\n', None)


@pytest.fixture(scope="session")
def truth(daemon: Endorm) -> Truth:
    return daemon.score(QUERY, DOCUMENTS)
