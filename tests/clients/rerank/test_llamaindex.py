"""LlamaIndex's `CohereRerank` (llama-index-postprocessor-cohere-rerank), unmodified: it builds a
`cohere.ClientV2(api_key=..., base_url=...)`."""

from __future__ import annotations

from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.cohere_rerank import CohereRerank

from .support import BEST, DOCUMENTS, MODEL_NAME, QUERY, Endorm, Truth


def test_postprocess_nodes(daemon: Endorm, truth: Truth) -> None:
    reranker = CohereRerank(api_key=daemon.token, base_url=daemon.url, model=MODEL_NAME, top_n=3,
                            max_retries=1)
    nodes = [NodeWithScore(node=TextNode(text=text, id_=str(i)))
             for i, text in enumerate(DOCUMENTS)]
    kept = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert len(kept) == 3
    assert kept[0].node.get_content() == DOCUMENTS[BEST]
    truth.check([(int(n.node.id_), n.score) for n in kept], 3)
