"""LangChain's `CohereRerank` (langchain-cohere), unmodified: it builds a `cohere.ClientV2` from
`base_url` and `cohere_api_key`, and sends `"max_tokens_per_doc": null`, which the daemon
accepts."""

from __future__ import annotations

from langchain_cohere import CohereRerank
from langchain_core.documents import Document

from .support import BEST, DOCUMENTS, MODEL_NAME, QUERY, Endorm, Truth


def test_compress_documents(daemon: Endorm, truth: Truth) -> None:
    reranker = CohereRerank(base_url=daemon.url, cohere_api_key=daemon.token, model=MODEL_NAME,
                            top_n=3)
    documents = [Document(page_content=text, metadata={"i": i}) for i, text in enumerate(DOCUMENTS)]
    kept = reranker.compress_documents(documents, QUERY)
    assert len(kept) == 3
    assert kept[0].page_content == DOCUMENTS[BEST]
    truth.check([(d.metadata["i"], d.metadata["relevance_score"]) for d in kept], 3)


def test_rerank(daemon: Endorm, truth: Truth) -> None:
    reranker = CohereRerank(base_url=daemon.url, cohere_api_key=daemon.token, model=MODEL_NAME)
    ranked = reranker.rerank(DOCUMENTS, QUERY, top_n=None)
    truth.check([(r["index"], r["relevance_score"]) for r in ranked], len(DOCUMENTS))
