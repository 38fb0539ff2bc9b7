"""Typed results of the endorm wire API (docs/API.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional


class EndormError(Exception):
    """A non-2xx answer from the daemon, or no daemon at all (``status`` 0).

    ``status`` is the HTTP status, ``code`` the daemon's error code (or type), ``message`` its text.
    """

    def __init__(self, status: int, code: Optional[str], message: str) -> None:
        super().__init__(f"endorm error {status} ({code}): {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


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
    aggregate: str
    results: List[CandidateScore]
    order: List[int]
    usage: Dict[str, int] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)

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
            aggregate=d.get("aggregate", ""),
            results=[CandidateScore.from_json(r) for r in d.get("results", [])],
            order=list(d.get("order", [])),
            usage=dict(d.get("usage") or {}),
            timings=dict(d.get("timings") or {}),
        )


@dataclass
class RerankItem:
    """One reranked document: ``index`` into the request's documents, higher score is better."""

    index: int
    relevance_score: float
    document: Optional[str] = None


@dataclass
class RerankResult:
    """Answer of ``POST /v1/rerank``; ``results`` are best first."""

    model: str
    results: List[RerankItem]
    usage: Dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "RerankResult":
        items = []
        for r in d.get("results", []):
            doc = r.get("document")
            items.append(
                RerankItem(
                    index=r["index"],
                    relevance_score=r["relevance_score"],
                    document=doc.get("text") if isinstance(doc, dict) else doc,
                )
            )
        return cls(model=d.get("model", ""), results=items, usage=dict(d.get("usage") or {}))


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
