"""Typed requests' option values and results of the endorm wire API (docs/API.md).

The field names are the wire's (``src/api/``, ``docs/openapi.json``); tests/test_schema.py checks
every name sent and read here against the daemon's schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional

# endorm.ray imports EndormError from here (it lives in _exceptions).
from ._exceptions import EndormError  # noqa: F401

#: ``format``: the model's chat template, or plain text (REWARD.md).
Format = Literal["chat", "raw"]
#: ``aggregate``: the response-level score (REWARD.md).
Aggregate = Literal["endo", "endo_mean", "logprob", "logprob_mean", "endo_lc"]
#: ``contrast``: what each candidate's score is contrasted with.
Contrast = Literal["neutral"]
#: ``GET /health``'s ``status``.
HealthStatus = Literal["ok", "loading", "degraded"]


@dataclass
class TokenScore:
    """Per-token detail (``return_tokens=True``)."""

    id: int
    text: str
    logprob: float
    q: Optional[float] = None
    v_next: Optional[float] = None
    reward: Optional[float] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TokenScore":
        return cls(
            id=d["id"],
            text=d.get("text", ""),
            logprob=d.get("logprob", 0.0),
            q=d.get("q"),
            v_next=d.get("v_next"),
            reward=d.get("reward"),
        )


@dataclass
class CandidateScore:
    """The score of one candidate; ``index`` is its position in the request, ``rank`` 1 is best."""

    index: int
    score: float
    rank: int
    endo: Optional[float] = None
    logprob: Optional[float] = None
    n_tokens: Optional[int] = None
    tokens: Optional[List[TokenScore]] = None
    endo_mean: Optional[float] = None
    logprob_mean: Optional[float] = None
    #: ``endo`` less the model's baseline per token times ``n_tokens`` (the length-controlled sum).
    endo_lc: Optional[float] = None
    #: With ``consensus``: the mean similarity of this candidate's text to the others'.
    agreement: Optional[float] = None
    #: With ``contrast="neutral"``: the aggregate of the same tokens after the neutral context.
    neutral: Optional[float] = None
    #: With ``reviewer=True``: the reviewer term ``log p(instruction | candidate)``.
    reviewer: Optional[float] = None
    #: With a reference model: the aggregate of the same tokens under it.
    reference: Optional[float] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CandidateScore":
        toks = d.get("tokens")
        return cls(
            index=d["index"],
            score=d["score"],
            rank=d["rank"],
            endo=d.get("endo"),
            logprob=d.get("logprob"),
            n_tokens=d.get("n_tokens"),
            tokens=[TokenScore.from_json(t) for t in toks] if toks is not None else None,
            endo_mean=d.get("endo_mean"),
            logprob_mean=d.get("logprob_mean"),
            endo_lc=d.get("endo_lc"),
            agreement=d.get("agreement"),
            neutral=d.get("neutral"),
            reviewer=d.get("reviewer"),
            reference=d.get("reference"),
        )


@dataclass
class ScoreResult:
    """Answer of ``POST /v1/score``. ``results`` keep request order; ``order`` is best first.

    Scores are comparable only between candidates of one request.
    """

    model: str
    aggregate: Aggregate
    results: List[CandidateScore]
    order: List[int]
    usage: Dict[str, int] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)
    #: The model whose score was subtracted (``reference_model``), if any.
    reference_model: Optional[str] = None
    #: How the request was read: its ``format``, else ``"chat"``, or ``"raw"`` for a model without
    #: a chat template.
    format: Format = "chat"

    @property
    def scores(self) -> List[float]:
        """The scores in request order."""
        return [r.score for r in self.results]

    @property
    def best_index(self) -> int:
        """Index (in request order) of the best candidate."""
        return self.order[0]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ScoreResult":
        return cls(
            model=d.get("model", ""),
            aggregate=d.get("aggregate", "endo"),
            results=[CandidateScore.from_json(r) for r in d.get("results", [])],
            order=list(d.get("order", [])),
            usage=dict(d.get("usage") or {}),
            timings=dict(d.get("timings") or {}),
            reference_model=d.get("reference_model"),
            format=d.get("format", "chat"),
        )


@dataclass
class RerankItem:
    """One reranked document: ``index`` into the request's documents. ``relevance_score`` is the
    probability that it is the best of the request's documents (0..1, summing to 1 over them);
    ``reward`` the daemon's raw reward behind it (``endo``, the scale of ``/v1/score``)."""

    index: int
    relevance_score: float
    reward: float
    document: Optional[str] = None


@dataclass
class RerankResult:
    """Answer of ``POST /v1/rerank``; ``results`` are best first."""

    model: str
    results: List[RerankItem]
    usage: Dict[str, int] = field(default_factory=dict)
    #: How the query and documents were read: ``"chat"``, or ``"raw"`` without a chat template.
    format: Format = "chat"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "RerankResult":
        items = []
        for r in d.get("results", []):
            doc = r.get("document")
            items.append(
                RerankItem(
                    index=r["index"],
                    relevance_score=r["relevance_score"],
                    reward=r["reward"],
                    document=doc.get("text") if isinstance(doc, dict) else doc,
                )
            )
        return cls(
            model=d.get("model", ""),
            results=items,
            usage=dict(d.get("usage") or {}),
            format=d.get("format", "chat"),
        )


@dataclass
class BestOfN:
    """Result of :meth:`Client.best_of_n`: the n candidates, their scores (one request), the best."""

    candidates: List[str]
    score: ScoreResult

    @property
    def best_index(self) -> int:
        return self.score.best_index

    @property
    def best(self) -> str:
        return self.candidates[self.best_index]

    @property
    def scores(self) -> List[float]:
        return self.score.scores
