"""What the rerank and reward client tests share: the daemon handle, the test data, and the
daemon's own scoring to compare each client's values with."""

from __future__ import annotations

import json
import math
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The tests talk to 127.0.0.1 only. LiteLLM fetches its model price map from the network at import
# unless told to use its own copy, and its cost estimate for the `huggingface` provider fetches the
# model's config.json from the Hugging Face hub after every rerank: HTTP(S) to anything but loopback
# goes to a proxy address where nothing listens (this process and the daemon and LiteLLM proxy it
# starts), so those lookups fail at once, without leaving the machine.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ[_name] = "http://127.0.0.1:9"
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = "127.0.0.1,localhost"

# Two shared cores may be busy: a request can take seconds.
TIMEOUT = 120.0

# SmolLM2-135M clearly prefers the right answer (endo about 18 against 14, 6 and -6), and the
# probabilities are not all 0 or 1, so the values are checked, not only the order.
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "The capital of France is Berlin.",
    "Paris is the capital of France.",
    "Bananas are yellow.",
    "London.",
]
BEST = 1
# Any name works on the rerank routes: a name the daemon does not serve is answered by the default
# model.
MODEL_NAME = "rerank-english-v3.0"


@dataclass
class Endorm:
    """A running daemon: its base URL, its token (None when auth is off) and a plain JSON caller."""

    url: str
    token: str | None
    log: Path

    def call(self, path: str, body: Any | None = None) -> Any:
        """GET `path`, or POST `body` as JSON; the token when the daemon has one."""
        data = None if body is None else json.dumps(body).encode()
        method = "GET" if data is None else "POST"
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())

    def score(self, query: str, documents: list[str]) -> "Truth":
        """What the native `/v1/score` (chat format, `endo`) says about `documents` as answers."""
        scored = self.call("/v1/score", {"prompt": query, "candidates": documents})
        return Truth.of([r["endo"] for r in scored["results"]], scored["order"])


@dataclass
class Truth:
    """The daemon's own scoring: `endo` per document, the softmax over them, best first."""

    endo: list[float]
    probability: list[float]
    order: list[int]

    @staticmethod
    def of(endo: list[float], order: list[int]) -> "Truth":
        best = max(endo)
        weights = [math.exp(e - best) for e in endo]
        total = sum(weights)
        return Truth(endo, [w / total for w in weights], order)

    def check(self, ranked: list[tuple[int, float]], top_n: int) -> None:
        """`ranked` is (index, relevance score) as a client returned them, best first."""
        assert [index for index, _ in ranked] == self.order[:top_n]
        assert ranked[0][0] == BEST, f"{DOCUMENTS[BEST]!r} is not first: {ranked}"
        for index, relevance in ranked:
            assert relevance == pytest.approx(self.probability[index], rel=1e-6, abs=1e-12), index


def close(value: float) -> Any:
    return pytest.approx(value, rel=1e-6, abs=1e-12)


