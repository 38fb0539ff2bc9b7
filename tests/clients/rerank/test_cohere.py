"""The Cohere Python SDK, unmodified: `base_url` is the daemon, `api_key` its token.

The SDK joins `base_url` and `v1/rerank` / `v2/rerank` by string concatenation (its
`core/http_client.py`, `_build_url`) and sends `Authorization: Bearer <api_key>`, which is what the
daemon's TCP listener expects.
"""

from __future__ import annotations

import cohere
from cohere.errors import UnauthorizedError
import pytest

from .support import BEST, DOCUMENTS, MODEL_NAME, QUERY, Endorm, Truth, close


def test_client_v1_rerank(daemon: Endorm, truth: Truth) -> None:
    co = cohere.Client(base_url=daemon.url, api_key=daemon.token, timeout=120)
    response = co.rerank(model=MODEL_NAME, query=QUERY, documents=DOCUMENTS, top_n=3,
                         return_documents=True)
    truth.check([(r.index, r.relevance_score) for r in response.results], 3)
    assert response.results[0].document.text == DOCUMENTS[BEST]
    assert response.meta.api_version.version == "1"
    # endorm's raw reward rides along as an extra field, equal to /v1/score's endo.
    for r in response.results:
        assert r.reward == close(truth.endo[r.index])


def test_client_v2_rerank(daemon: Endorm, truth: Truth) -> None:
    co = cohere.ClientV2(base_url=daemon.url, api_key=daemon.token, timeout=120)
    response = co.rerank(model=MODEL_NAME, query=QUERY, documents=DOCUMENTS, top_n=2)
    truth.check([(r.index, r.relevance_score) for r in response.results], 2)
    assert response.meta.api_version.version == "2"
    # Without top_n every document comes back, and the relevance scores sum to 1.
    everything = co.rerank(model=MODEL_NAME, query=QUERY, documents=DOCUMENTS)
    truth.check([(r.index, r.relevance_score) for r in everything.results], len(DOCUMENTS))
    assert sum(r.relevance_score for r in everything.results) == pytest.approx(1.0)


def test_a_wrong_token_is_refused(daemon: Endorm) -> None:
    co = cohere.ClientV2(base_url=daemon.url, api_key="not-the-token", timeout=120)
    with pytest.raises(UnauthorizedError):
        co.rerank(model=MODEL_NAME, query=QUERY, documents=DOCUMENTS)
