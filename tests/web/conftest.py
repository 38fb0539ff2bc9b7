"""The lens in a real browser: Debian's Chromium (`$CHROMIUM`, default /usr/bin/chromium), headless,
driven over the DevTools protocol (cdp.py), against the real daemon (`$ENDORM_BIN`, default
target/release/endorm) on the real default model, served twice under two names (`alpha`, and
`beta` with a principle of its own, so the two disagree) from one config, on a socket and a free
loopback port of its own. Screenshots go to target/web/.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from cdp import Chromium, Page, assert_not_blank

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("ENDORM_BIN", REPO / "target" / "release" / "endorm"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
MODEL = Path(
    os.environ.get("ENDORM_MODEL", Path.home() / ".cache/endorm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
).expanduser()
SHOTS = REPO / "target" / "web"
BETA_PRINCIPLE = "A good answer is one short, exact sentence."


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


@dataclass
class Daemon:
    dir: Path
    socket: Path
    port: int
    token: str
    process: subprocess.Popen
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: dict | None = None, token: bool = True) -> tuple[int, dict, bytes]:
        """Over TCP: status, headers (lower-case names), body."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()

    def score(self, body: dict) -> dict:
        status, _, data = self.request("POST", "/v1/score", body)
        assert status == 200, data
        return json.loads(data)

    def unix_get(self, path: str) -> tuple[int, dict, bytes]:
        connection = UnixConnection(str(self.socket))
        connection.request("GET", path)
        response = connection.getresponse()
        result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        connection.close()
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    assert BIN.exists(), f"no endorm binary at {BIN} (cargo build --release, or set ENDORM_BIN)"
    assert MODEL.exists(), f"no model at {MODEL} (scripts/fetch-model)"
    tmp = Path(tempfile.mkdtemp(prefix="endorm-web-", dir="/tmp"))
    config = tmp / "endorm.toml"
    config.write_text(
        f'[server]\ndefault_model = "alpha"\ntoken_file = "{tmp / "token"}"\n\n'
        f'[models.alpha]\npath = "{MODEL}"\n\n'
        f'[models.beta]\npath = "{MODEL}"\nprinciple = "{BETA_PRINCIPLE}"\n'
    )
    log = tmp / "serve.log"
    process = None
    for _ in range(3):  # another process may take the free port before the daemon does
        port = free_port()
        process = subprocess.Popen(
            [str(BIN), "serve", "--config", str(config), "--socket", str(tmp / "endorm.sock"), "--listen", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),
        )
        daemon = Daemon(tmp, tmp / "endorm.sock", port, "", process, log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            token_file = tmp / "token"
            if token_file.exists() and token_file.read_text().strip():
                daemon.token = token_file.read_text().strip()
                try:
                    status, _, body = daemon.request("GET", "/health")
                    if status == 200 and json.loads(body)["status"] == "ok":
                        break
                except OSError:
                    pass
            time.sleep(0.2)
        if process.poll() is None:
            break
    assert process is not None and process.poll() is None, log.read_text()
    yield daemon
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    # A daemon that stopped leaves no address (with its token) behind.
    left = [p.name for p in tmp.iterdir() if p.name.startswith("endorm.sock")]
    shutil.rmtree(tmp, ignore_errors=True)
    assert left == [], f"left beside the socket: {left}"


@pytest.fixture(scope="session")
def browser() -> Iterator[Chromium]:
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    tmp = Path(tempfile.mkdtemp(prefix="endorm-web-chromium-", dir="/tmp"))
    chromium = Chromium(CHROMIUM, tmp / "profile", tmp / "chromium.log")
    yield chromium
    chromium.close()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def viewer(browser: Chromium) -> Iterator[Page]:
    """A blank page that decodes screenshots."""
    page = Page(browser)
    yield page
    page.close()


class Lens(Page):
    """A page under test: fails its test on a console error it was not told to expect."""

    expected_errors: tuple[str, ...] = ()


@pytest.fixture
def page(browser: Chromium) -> Iterator[Lens]:
    lens = Lens(browser)
    yield lens
    errors = [e for e in lens.errors() if not any(x in e for x in lens.expected_errors)]
    lens.close()
    assert not errors, "console errors:\n" + "\n".join(errors)


@pytest.fixture
def shoot(viewer: Page):
    """Saves a screenshot of a page under target/web/NAME.png and checks it is not blank."""

    def shoot(page: Page, name: str, full: bool = False, region: str | None = None) -> Path:
        path = SHOTS / f"{name}.png"
        data = page.screenshot(path, full=full, region=region)
        assert_not_blank(viewer, data, name)
        return path

    return shoot
