"""The daemon the tests run against: `target/release/endorm serve` on a temporary socket."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
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


@pytest.fixture(scope="session")
def socket_path() -> Iterator[str]:
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
        proc = subprocess.Popen(
            [str(BIN), "serve", "--socket", sock, "--exit-on-eof", "--model", str(MODEL),
             "--config", config],
            stdin=subprocess.PIPE,
            stderr=log,
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
            yield sock
        finally:
            assert proc.stdin is not None
            proc.stdin.close()  # --exit-on-eof: the daemon stops
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture()
def client(socket_path: str) -> Iterator[Client]:
    with Client(socket_path) as c:
        yield c
