"""The LiteLLM proxy (`litellm --config proxy.yaml`) with a rerank model routed to the daemon, and
a Cohere client of the proxy. The proxy's config is the one docs/INTEGRATIONS.md shows."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import cohere
import pytest

from .support import BEST, DOCUMENTS, QUERY, TIMEOUT, Endorm, Truth

CONFIG = """\
model_list:
  - model_name: endorm-rerank
    litellm_params:
      model: cohere/rerank-english-v3.0   # any name: the daemon answers with its default model
      api_base: {url}
      api_key: os.environ/ENDORM_TOKEN
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def proxy(daemon: Endorm) -> Iterator[tuple[str, str]]:
    """The proxy's URL and master key."""
    litellm = Path(sys.executable).with_name("litellm")
    key = "sk-" + secrets.token_hex(8)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="litellm-") as tmp:
        Path(tmp, "proxy.yaml").write_text(CONFIG.format(url=daemon.url))
        env = dict(os.environ, ENDORM_TOKEN=daemon.token or "", LITELLM_MASTER_KEY=key)
        log_path = Path(tmp, "proxy.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(litellm), "--config", str(Path(tmp, "proxy.yaml")),
                                     "--host", "127.0.0.1", "--port", str(port), "--telemetry",
                                     "False"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, cwd=tmp)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"litellm exited {proc.returncode}: "
                                f"{log_path.read_text(errors='replace')[-3000:]}")
                try:
                    with urllib.request.urlopen(url + "/health/liveliness", timeout=5):
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("the LiteLLM proxy did not start in 180 s")
                time.sleep(0.5)
            yield url, key
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_proxy_rerank_route(proxy: tuple[str, str], truth: Truth) -> None:
    url, key = proxy
    body = {"model": "endorm-rerank", "query": QUERY, "documents": DOCUMENTS, "top_n": 3}
    request = urllib.request.Request(url + "/v1/rerank", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        results = json.loads(response.read())["results"]
    truth.check([(r["index"], r["relevance_score"]) for r in results], 3)


def test_cohere_client_through_the_proxy(proxy: tuple[str, str], truth: Truth) -> None:
    url, key = proxy
    co = cohere.ClientV2(base_url=url, api_key=key, timeout=TIMEOUT)
    response = co.rerank(model="endorm-rerank", query=QUERY, documents=DOCUMENTS, top_n=2)
    truth.check([(r.index, r.relevance_score) for r in response.results], 2)
    assert response.results[0].index == BEST
