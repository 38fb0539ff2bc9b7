"""The daemon the tests run against: `target/release/endorm serve` on a temporary socket."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from endorm import Client, EndormError

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
    """The daemon's Unix socket, and its loopback TCP listener with the bearer token it wants."""

    socket: str
    url: str
    token: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    if not BIN.exists():
        pytest.skip(f"no endorm binary at {BIN} (set ENDORM_BIN)")
    if not MODEL.exists():
        pytest.skip(f"no model at {MODEL} (set ENDORM_TEST_MODEL)")
    # Short directory: socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="endorm-", dir="/tmp") as tmp:
        sock = os.path.join(tmp, "e.sock")
        config = os.path.join(tmp, "endorm.toml")
        Path(config).write_text("")  # an empty config: the user's own one does not leak in
        log = open(os.path.join(tmp, "serve.log"), "wb")
        port, token = free_port(), secrets.token_hex(16)
        proc = subprocess.Popen(
            [str(BIN), "serve", "--socket", sock, "--exit-on-eof", "--model", str(MODEL),
             "--config", config, "--listen", f"127.0.0.1:{port}"],
            stdin=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "ENDORM_TOKEN": token},
        )
        try:
            deadline = time.monotonic() + 120
            with Client(sock, timeout=5) as c:
                while True:
                    if proc.poll() is not None:
                        err = Path(tmp, "serve.log").read_text(errors="replace")
                        pytest.fail(f"endorm serve exited {proc.returncode}: {err}")
                    try:
                        if c.health()["status"] == "ok":
                            break
                    except EndormError:
                        pass
                    if time.monotonic() > deadline:
                        pytest.fail("endorm serve did not become healthy in 120 s")
                    time.sleep(0.1)
            yield Daemon(sock, f"http://127.0.0.1:{port}", token)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()  # --exit-on-eof: the daemon stops
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture(scope="session")
def socket_path(daemon: Daemon) -> str:
    return daemon.socket


@pytest.fixture()
def client(socket_path: str) -> Iterator[Client]:
    with Client(socket_path) as c:
        yield c
