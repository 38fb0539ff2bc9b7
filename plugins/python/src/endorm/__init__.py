"""endorm: Python client for the endorm local reward model daemon.

>>> from endorm import Client
>>> with Client() as c:
...     r = c.score("What is the capital of France?", ["London.", "Paris."])
...     r.best_index
1

Scores are comparable only between candidates of one request.
"""

from ._client import AsyncClient, Client, Prompt, default_socket
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    EndormError,
    InternalServerError,
    NotFoundError,
    RequestTooLargeError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from ._types import (
    Aggregate,
    BestOfN,
    CandidateScore,
    Contrast,
    Format,
    HealthStatus,
    RerankItem,
    RerankResult,
    ScoreResult,
    TokenScore,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Aggregate",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BestOfN",
    "CandidateScore",
    "Client",
    "Contrast",
    "EndormError",
    "Format",
    "HealthStatus",
    "InternalServerError",
    "NotFoundError",
    "Prompt",
    "RequestTooLargeError",
    "RerankItem",
    "RerankResult",
    "ScoreResult",
    "ServiceUnavailableError",
    "TokenScore",
    "UnprocessableEntityError",
    "default_socket",
]
# The version of the package and of the daemon it carries (Cargo.toml's; scripts/build-wheel
# refuses a wheel whose two versions differ).
__version__ = "0.1.0"
