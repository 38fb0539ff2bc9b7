"""Continue's rerank role with its `cohere` provider. Continue itself (an editor extension) cannot
run here: this reproduces its request from its source, `core/llm/llms/Cohere.ts` (`rerank`):
`POST new URL("rerank", apiBase)` with `Authorization: Bearer <apiKey>` and `{model, query,
documents}`; it sorts `results` by `index` and takes each `relevance_score`. `new URL` resolves like
`urljoin`, so `apiBase: http://HOST:PORT/v1/` posts to `/v1/rerank` and `.../v1` (no slash) to
`/rerank`: the daemon serves both."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from .support import DOCUMENTS, MODEL_NAME, QUERY, TIMEOUT, Endorm, Truth, close


@pytest.mark.parametrize("api_base", ["/v1/", "/v1"])
def test_continue_cohere_rerank_request(daemon: Endorm, truth: Truth, api_base: str) -> None:
    url = urllib.parse.urljoin(daemon.url + api_base, "rerank")
    body = {"model": MODEL_NAME, "query": QUERY, "documents": DOCUMENTS}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {daemon.token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        results = json.loads(response.read())["results"]
    scores = [r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])]
    assert scores == [close(p) for p in truth.probability]
    assert max(range(len(scores)), key=scores.__getitem__) == truth.order[0] == 1
