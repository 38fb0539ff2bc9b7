"""The daemons the tests run against: `endorm serve` (target/release/endorm, or $ENDORM_BIN) on a
temporary socket, one for the session and fresh ones for the tests of start-up and limits."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from endorm import APITimeoutError, Client

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("ENDORM_BIN", REPO / "target" / "release" / "endorm"))
MODEL = Path(
    os.environ.get(
        "ENDORM_TEST_MODEL",
        Path.home() / ".cache" / "endorm" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
).expanduser()


@dataclass
class Daemon:
    """A running `endorm serve`: its Unix socket, its loopback TCP listener with the bearer token
    it wants, and its process."""

    socket: str
    url: str
    token: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """Stops it by closing its stdin (`--exit-on-eof`), else by its PID."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_binary_and_model() -> None:
    if not BIN.exists():
        pytest.skip(f"no endorm binary at {BIN} (set ENDORM_BIN)")
    if not MODEL.exists():
        pytest.skip(f"no model at {MODEL} (set ENDORM_TEST_MODEL)")


def start_daemon(directory: str, config: str = "", args: Optional[List[str]] = None) -> Daemon:
    """Starts `endorm serve` in ``directory`` (a short path: socket paths are limited to 107
    bytes) with ``config`` as its whole config file, so the user's own one does not leak in.
    Returns at once, before it is ready."""
    sock = os.path.join(directory, "e.sock")
    config_path = os.path.join(directory, "endorm.toml")
    Path(config_path).write_text(config)
    log = Path(directory, "serve.log")
    port, token = free_port(), secrets.token_hex(16)
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--socket", sock, "--exit-on-eof", "--model", str(MODEL),
             "--config", config_path, "--listen", f"127.0.0.1:{port}", *(args or [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "ENDORM_TOKEN": token},
        )
    return Daemon(sock, f"http://127.0.0.1:{port}", token, proc, log)


def wait_healthy(daemon: Daemon) -> None:
    """Waits until ``daemon`` serves its model; fails with its log if it exits or does not."""
    deadline = time.monotonic() + 120
    with Client(daemon.socket, timeout=5) as c:
        while True:
            if daemon.proc.poll() is not None:
                pytest.fail(f"endorm serve exited {daemon.proc.returncode}: {daemon.log_text()}")
            try:
                status = c.wait_ready(timeout=1)["status"]
                break
            except APITimeoutError as e:
                if time.monotonic() > deadline:
                    pytest.fail(f"endorm serve did not become ready: {e}\n{daemon.log_text()}")
    if status != "ok":
        pytest.fail(f"endorm serve is {status}: {daemon.log_text()}")


@pytest.fixture()
def short_tmp() -> Iterator[str]:
    """A fresh directory under /tmp, short enough for a socket path."""
    with tempfile.TemporaryDirectory(prefix="endorm-", dir="/tmp") as tmp:
        yield tmp


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    need_binary_and_model()
    with tempfile.TemporaryDirectory(prefix="endorm-", dir="/tmp") as tmp:
        d = start_daemon(tmp)
        try:
            wait_healthy(d)
            yield d
        finally:
            d.stop()


@pytest.fixture(scope="session")
def socket_path(daemon: Daemon) -> str:
    return daemon.socket


@pytest.fixture()
def client(socket_path: str) -> Iterator[Client]:
    with Client(socket_path) as c:
        yield c
