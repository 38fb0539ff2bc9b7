"""`litellm.rerank`, unmodified, with each provider whose wire format endorm speaks and `api_base`
pointing at the daemon. Where each posts (LiteLLM's `llms/<provider>/rerank/transformation.py`):

* `cohere`: `{api_base}/v2/rerank`, or `/v1/rerank` when `api_base` ends with it (Cohere's body);
* `jina_ai`: `/v1/rerank` on the host of `api_base` (its path is replaced);
* `hosted_vllm`: `{api_base}/rerank` (Cohere-shaped body);
* `huggingface`: `{api_base}/rerank` with TEI's body (`texts`, `raw_scores`, `return_text`, and
  `top_n`, which TEI itself does not have), parsing TEI's bare list.

All send `Authorization: Bearer <api_key>`.
"""

from __future__ import annotations

import litellm
import pytest

from .support import BEST, DOCUMENTS, MODEL_NAME, QUERY, Endorm, Truth


@pytest.mark.parametrize(
    ("provider", "path"),
    [("cohere", ""), ("cohere", "/v1/rerank"), ("jina_ai", ""), ("hosted_vllm", ""),
     ("huggingface", "")],
    ids=["cohere-v2", "cohere-v1", "jina_ai", "hosted_vllm", "huggingface-tei"],
)
def test_litellm_rerank(daemon: Endorm, truth: Truth, provider: str, path: str) -> None:
    response = litellm.rerank(
        model=f"{provider}/{MODEL_NAME}",
        query=QUERY,
        documents=DOCUMENTS,
        top_n=3,
        return_documents=True,
        api_base=daemon.url + path,
        api_key=daemon.token,
        timeout=120,
    )
    results = response.results
    assert len(results) == 3
    truth.check([(r["index"], r["relevance_score"]) for r in results], 3)
    assert results[0]["document"]["text"] == DOCUMENTS[BEST]
