"""endorm: Python client for the endorm local reward model daemon.

>>> from endorm import Client
>>> with Client() as c:
...     r = c.score(["Paris.", "London."], prompt="What is the capital of France?")
...     r.best_index
0

Scores are comparable only between candidates of one request.
"""

from ._client import AsyncClient, Client, default_socket
from ._types import (
    BestOfN,
    CandidateScore,
    EndormError,
    RerankItem,
    RerankResult,
    ScoreResult,
    TokenScore,
)

__all__ = [
    "AsyncClient",
    "BestOfN",
    "CandidateScore",
    "Client",
    "EndormError",
    "RerankItem",
    "RerankResult",
    "ScoreResult",
    "TokenScore",
    "default_socket",
]
__version__ = "0.1.0"
