"""The real daemon on loopback TCP for the tests of real client libraries.

`endorm serve` (`$ENDORM_BIN`, default target/release/endorm) on the default model, on 127.0.0.1 at
a free port with a random bearer token, its socket and an empty config in a temporary directory.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("ENDORM_BIN", REPO / "target" / "release" / "endorm"))
MODEL = Path(
    os.environ.get(
        "ENDORM_TEST_MODEL",
        Path.home() / ".cache" / "endorm" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
).expanduser()


@dataclass
class Daemon:
    """A running `endorm serve --listen 127.0.0.1:PORT`."""

    url: str  # http://127.0.0.1:PORT
    token: str
    model: str  # the id it serves the default model under
    log: Path
    socket: str = ""  # its Unix socket, for clients that speak to it there (endorm's own)

    def get(self, path: str) -> dict:
        return self._call(urllib.request.Request(self.url + path))

    def post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        return self._call(request)

    def _call(self, request: urllib.request.Request) -> dict:
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


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
    with tempfile.TemporaryDirectory(prefix="endorm-clients-", dir="/tmp") as tmp:
        config = Path(tmp, "endorm.toml")
        config.write_text("")  # the user's own config does not leak in
        log_path = Path(tmp, "serve.log")
        token = secrets.token_hex(16)
        for attempt in range(3):  # another process may take the free port before the daemon does
            port = free_port()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [str(BIN), "serve", "--socket", str(Path(tmp, "e.sock")), "--config", str(config),
                     "--model", str(MODEL), "--listen", f"127.0.0.1:{port}", "--exit-on-eof"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env={**os.environ, "ENDORM_TOKEN": token, "RUST_LOG": "warn,endorm=info"},
                )
            up = Daemon(f"http://127.0.0.1:{port}", token, "", log_path, str(Path(tmp, "e.sock")))
            healthy = False
            deadline = time.monotonic() + 120
            while not healthy and proc.poll() is None and time.monotonic() < deadline:
                try:
                    healthy = up.get("/health")["status"] == "ok"
                except (OSError, ValueError):  # not listening yet (URLError is an OSError)
                    pass
                time.sleep(0.1)
            if proc.poll() is None:
                break
            if attempt == 2 or "address" not in up.log_text().lower():
                pytest.fail(f"endorm serve exited {proc.returncode}: {up.log_text()}")
        try:
            if not healthy:
                pytest.fail(f"endorm serve did not become healthy in 120 s: {up.log_text()}")
            up.model = up.get("/v1/models")["data"][0]["id"]
            yield up
        finally:
            assert proc.stdin is not None
            proc.stdin.close()  # --exit-on-eof: the daemon stops
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
