"""The errors the endorm client raises: one tree, the shape of the openai and cohere SDKs'.

    EndormError
    ├── APIConnectionError         no daemon answered (after the retries)
    │   └── APITimeoutError        no answer within ``timeout``
    └── APIStatusError             a non-2xx answer: status_code, code, type, message, body
        ├── BadRequestError            400
        ├── AuthenticationError        401 (TCP without the right token)
        ├── NotFoundError              404 (unknown model or route)
        ├── RequestTooLargeError       413 (body_too_large, job_too_large)
        ├── UnprocessableEntityError   422 (input too long for the context)
        └── InternalServerError        5xx
            └── ServiceUnavailableError    503 (loading, queue full, shutting down)
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

import httpx


class EndormError(Exception):
    """Base class of every error the endorm client raises; ``message`` is its text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message: str = message


class APIConnectionError(EndormError):
    """The daemon could not be reached at ``where`` (a socket path or a URL): no socket, refused,
    or the connection dropped, after the client's retries. The message says how to start it."""

    def __init__(self, message: str, *, where: str) -> None:
        super().__init__(message)
        self.where = where


class APITimeoutError(APIConnectionError):
    """The daemon did not answer within the client's ``timeout`` (or did not become ready within
    :meth:`~endorm.Client.wait_ready`'s). Not retried: the daemon may still be scoring it."""


class APIStatusError(EndormError):
    """A non-2xx answer. ``status_code`` is the HTTP status; ``code`` the daemon's stable error
    code (e.g. ``context_length_exceeded``) and ``type`` its class (e.g. ``invalid_request_error``),
    both ``None`` if the body was not endorm's error JSON; ``body`` the parsed body (or ``None``);
    ``response`` the ``httpx.Response``."""

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: Any,
        code: Optional[str],
        type: Optional[str],
    ) -> None:
        super().__init__(f"{response.status_code} {code or 'error'}: {message}")
        self.message = message
        self.response = response
        self.status_code: int = response.status_code
        self.body = body
        self.code = code
        self.type = type


class BadRequestError(APIStatusError):
    """400: the request is wrong (a bad field, no candidates, an unknown option value)."""


class AuthenticationError(APIStatusError):
    """401: on TCP, the bearer token is missing or is not the daemon's."""


class NotFoundError(APIStatusError):
    """404: an unknown model id (``model_not_found``) or route."""


class RequestTooLargeError(APIStatusError):
    """413: the body is over the daemon's limit (``body_too_large``) or one job of the request is
    over ``max_job_tokens`` (``job_too_large``)."""


class UnprocessableEntityError(APIStatusError):
    """422: the input is too long for the model's context (``context_length_exceeded``)."""


class InternalServerError(APIStatusError):
    """5xx: the daemon could not score (e.g. its model failed to load)."""


class ServiceUnavailableError(InternalServerError):
    """503, still after the retries: a model is loading, the queue is full, too many connections
    are open, or the daemon is shutting down. ``retry_after`` is the daemon's ``Retry-After``."""

    @property
    def retry_after(self) -> Optional[float]:
        return _seconds(self.response.headers.get("retry-after"))


_BY_STATUS: Dict[int, Type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    503: ServiceUnavailableError,
}


def status_error(response: httpx.Response) -> APIStatusError:
    """The error for a non-2xx ``response``, with the daemon's ``{"error": {...}}`` read out."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or response.text)
        code, kind = error.get("code"), error.get("type")
    else:
        message, code, kind = response.text or response.reason_phrase, None, None
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    return cls(message, response=response, body=body, code=code, type=kind)


def _seconds(value: Optional[str]) -> Optional[float]:
    """A ``Retry-After`` in seconds (endorm sends whole seconds; an HTTP date is not used)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
