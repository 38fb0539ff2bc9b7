"""Sync and async clients for the endorm daemon over its Unix socket or TCP (docs/API.md)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import httpx

from ._exceptions import (
    APIConnectionError,
    APITimeoutError,
    ServiceUnavailableError,
    _seconds,
    status_error,
)
from ._types import Aggregate, BestOfN, Contrast, Format, RerankResult, ScoreResult

Message = Mapping[str, str]
#: What the candidates answer: a prompt's text, or a conversation of ``{role, content}`` messages.
Prompt = Union[str, Sequence[Message]]
Document = Union[str, Mapping[str, str]]

log = logging.getLogger("endorm")

DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_RETRIES = 2
#: Backoff between retries: 0.5 s, 1 s, 2 s, ... up to 8 s, each less up to a quarter at random.
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
#: A longer ``Retry-After`` than this is not waited for; the backoff is used instead.
MAX_RETRY_AFTER = 60.0


def default_socket() -> str:
    """Where the daemon listens by default: ``$ENDORM_SOCKET``, else like ``endorm serve``:
    ``$XDG_RUNTIME_DIR/endorm/endorm.sock``, else the per-user cache directory
    (``~/Library/Caches/endorm`` on macOS, ``$XDG_CACHE_HOME/endorm`` or ``~/.cache/endorm``)."""
    env = os.environ.get("ENDORM_SOCKET")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and sys.platform != "darwin" and os.path.isabs(runtime):
        return os.path.join(runtime, "endorm", "endorm.sock")
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return str(base / "endorm" / "endorm.sock")


def _connection(
    socket: Optional[str], url: Optional[str], token: Optional[str], transport: Any
) -> Tuple[Optional[str], str, Dict[str, Any]]:
    """Where the client talks: ``(socket, where, httpx client arguments)``. The Unix socket by
    default (through ``transport``, httpx's sync or async transport class); with ``url``, the
    daemon's TCP listener and its bearer token (``token``, else ``$ENDORM_TOKEN``)."""
    if url is None:
        path = str(socket) if socket is not None else default_socket()
        return path, path, {"base_url": "http://endorm", "transport": transport(uds=path)}
    if socket is not None:
        raise ValueError("pass socket= or url=, not both")
    token = token if token is not None else os.environ.get("ENDORM_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return None, url.rstrip("/"), {"base_url": url.rstrip("/"), "headers": headers}


def _texts(value: Any, name: str) -> List[Any]:
    """``value`` as a list, refusing a lone ``str``: iterated, it would be one text per character."""
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of texts, not a {type(value).__name__} (which would be scored "
            f"one character at a time): pass [text] for one"
        )
    return list(value)


def _score_body(prompt: Prompt, candidates: Sequence[str], options: Dict[str, Any]) -> Dict[str, Any]:
    """The ``/v1/score`` body: the prompt's text as ``prompt`` or a conversation as ``messages``,
    the candidates, and the options not left at ``None`` or ``False`` (the daemon's defaults), so
    that the body says only what the caller asked for."""
    texts = _texts(candidates, "candidates")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"candidates[{i}] is a {type(text).__name__}, not a str")
    body: Dict[str, Any] = {"candidates": texts}
    if isinstance(prompt, str):
        body["prompt"] = prompt
    elif isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        body["messages"] = [dict(m) for m in prompt]
    else:
        raise TypeError(
            "prompt must be a str or a list of {\"role\", \"content\"} messages, not "
            f"{type(prompt).__name__} (score(prompt, candidates, ...): the prompt comes first)"
        )
    body.update({k: v for k, v in options.items() if v is not None and v is not False})
    return body


def _rerank_body(
    query: str,
    documents: Sequence[Document],
    top_n: Optional[int],
    max_tokens_per_doc: Optional[int],
    model: Optional[str],
) -> Dict[str, Any]:
    docs = _texts(documents, "documents")
    body: Dict[str, Any] = {
        "query": query,
        "documents": [d if isinstance(d, str) else dict(d) for d in docs],
        "return_documents": True,
    }
    optional = {"top_n": top_n, "max_tokens_per_doc": max_tokens_per_doc, "model": model}
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def _score_options_of(options: Mapping[str, Any]) -> Dict[str, Any]:
    """``options`` if each is a keyword of :meth:`Client.score`; else a TypeError naming them,
    before any candidate is generated."""
    unknown = sorted(set(options) - SCORE_OPTIONS)
    if unknown:
        raise TypeError(f"not score() options: {unknown}; these are: {sorted(SCORE_OPTIONS)}")
    return dict(options)


class _Retries:
    """When to retry a request, and how long to wait first: on connection errors and on 503
    (model loading, queue full, shutting down), at most ``max_retries`` times, after the daemon's
    ``Retry-After`` if it gave one (up to ``MAX_RETRY_AFTER``), else an exponential backoff.
    Every endorm route is free of side effects, so a retried request can never act twice."""

    def __init__(self, max_retries: int, where: str) -> None:
        self.left = max_retries
        self.attempt = 0
        self.where = where

    def _delay(self, retry_after: Optional[float]) -> Optional[float]:
        if self.left <= 0:
            return None
        self.left -= 1
        backoff: float = min(INITIAL_RETRY_DELAY * 2.0**self.attempt, MAX_RETRY_DELAY)
        self.attempt += 1
        if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
            return retry_after
        return backoff * (1 - 0.25 * random.random())

    def after_response(self, response: httpx.Response) -> Optional[float]:
        """Seconds to wait before retrying ``response``, or None to return it."""
        if response.status_code != 503:
            return None
        delay = self._delay(_seconds(response.headers.get("retry-after")))
        if delay is not None:
            log.info("endorm: 503 from %s, retrying in %.2f s", self.where, delay)
        return delay

    def after_error(self, error: Exception) -> float:
        """Seconds to wait before retrying after ``error``; raises the client's error instead
        when the request may not (a read timeout: the daemon may still be scoring it) or need not
        be retried, or no retry is left."""
        delay = self._delay(None) if isinstance(error, _RETRIED_ERRORS) else None
        if delay is None:
            raise _connection_error(self.where, error) from error
        log.info("endorm: %s at %s, retrying in %.2f s", type(error).__name__, self.where, delay)
        return delay


#: Errors of a request that reached no daemon: they become APIConnectionError (or its subclass
#: APITimeoutError); those in _RETRIED_ERRORS are retried first (no socket, refused, dropped).
_CONNECTION_ERRORS = (httpx.TransportError, OSError)
_RETRIED_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ConnectTimeout, OSError)


def _connection_error(where: str, err: Exception) -> APIConnectionError:
    if isinstance(err, httpx.TimeoutException) and not isinstance(err, httpx.ConnectTimeout):
        return APITimeoutError(
            f"the endorm daemon at {where} did not answer in time ({type(err).__name__}); "
            "pass a longer timeout=... to the client",
            where=where,
        )
    if where.startswith(("http://", "https://")):
        hint = "start it with `endorm serve --listen HOST:PORT` (or pass url=... where it listens)"
    else:
        hint = ("start it with `endorm serve` (or pass socket=... / set ENDORM_SOCKET to where it "
                "listens)")
    return APIConnectionError(
        f"cannot reach the endorm daemon at {where} ({err or type(err).__name__}); {hint}",
        where=where,
    )


def _options(local: Dict[str, Any]) -> Dict[str, Any]:
    """A method's keyword options from its ``locals()``: each parameter name is the wire's field
    name, written once (tests/test_schema.py checks them against the daemon's schema)."""
    return {k: v for k, v in local.items() if k not in ("self", "prompt", "candidates")}


def _route(path: str) -> str:
    """``path`` as a route of the daemon: ``/v1/score``, not a URL (which would leave it)."""
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("//"):
        raise ValueError(f"path must be a route of the daemon such as '/v1/score', not {path!r}")
    return path


def _json(response: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; otherwise the APIStatusError subclass for its status."""
    if response.is_success:
        return response.json()
    raise status_error(response)


def _health(response: httpx.Response) -> Dict[str, Any]:
    """``/health``'s body: 200, or 503 while a model loads (the body then says ``loading``)."""
    if response.status_code == 503:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "status" in body:
            return body
    return _json(response)


def _not_ready(health: Optional[Dict[str, Any]], error: Optional[Exception]) -> str:
    if error is not None:
        return str(error)
    return f"status {health.get('status') if health else None!r}"


def _ready_timeout(where: str, timeout: float, last: str) -> APITimeoutError:
    return APITimeoutError(
        f"the endorm daemon at {where} was not ready after {timeout:g} s (last: {last})",
        where=where,
    )


class _BaseClient:
    """Where a client talks, its httpx client and its retry policy; the subclasses name httpx's
    sync or async classes."""

    _transport: Any
    _http_class: Any

    def __init__(
        self,
        socket: Optional[str] = None,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        self.socket, self._where, kwargs = _connection(socket, url, token, self._transport)
        self.timeout = timeout
        self.max_retries = max_retries
        self._http = self._http_class(timeout=timeout, **kwargs)

    def _retries(self) -> _Retries:
        return _Retries(self.max_retries, self._where)


class Client(_BaseClient):
    """Blocking client. ``socket`` defaults to :func:`default_socket`; ``url`` (e.g.
    ``"http://127.0.0.1:8765"``, the daemon's ``--listen`` address) talks TCP instead, with
    ``token`` or ``$ENDORM_TOKEN`` as its bearer token. ``timeout`` is in seconds, per request.
    ``max_retries`` (default 2, 0 for none) retries a request on a connection error or a 503,
    honouring the daemon's ``Retry-After``.

    Use as a context manager, or call :meth:`close`.
    """

    _transport = httpx.HTTPTransport
    _http_class = httpx.Client

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(
        self, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> httpx.Response:
        retries = self._retries()
        while True:
            try:
                response = self._http.request(method, path, json=body, **kwargs)
            except _CONNECTION_ERRORS as e:
                time.sleep(retries.after_error(e))
                continue
            delay = retries.after_response(response)
            if delay is None:
                return response
            time.sleep(delay)

    def health(self) -> Dict[str, Any]:
        """``GET /health``: ``{"status": "ok"|"loading"|"degraded", "models": [...]}``, also
        while a model loads (the daemon's 503). A probe: not retried."""
        try:
            response = self._http.get("/health")
        except _CONNECTION_ERRORS as e:
            raise _connection_error(self._where, e) from e
        return _health(response)

    def wait_ready(self, timeout: float = 60.0) -> Dict[str, Any]:
        """Wait until the daemon answers and no model is still loading; return its health
        (``status`` ``"ok"``, or ``"degraded"`` when a model failed to load: see its ``error``).
        No daemon yet and 503s are waited through; after ``timeout`` seconds it raises
        :class:`APITimeoutError` with the last of them."""
        deadline = time.monotonic() + timeout
        pause = 0.05
        while True:
            health: Optional[Dict[str, Any]] = None
            error: Optional[Exception] = None
            try:
                health = self.health()
                if health.get("status") != "loading":
                    return health
            except (APIConnectionError, ServiceUnavailableError) as e:
                error = e  # not up yet, or a 503 other than loading (e.g. too many connections)
            left = deadline - time.monotonic()
            if left <= 0:
                raise _ready_timeout(self._where, timeout, _not_ready(health, error))
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    def models(self) -> List[Dict[str, Any]]:
        """``GET /v1/models``: the served models (``id``, ``state``, ``meta``, ...)."""
        return _json(self._send("GET", "/v1/models"))["data"]

    def post(self, path: str, json: Any) -> Any:
        """``POST path`` with ``json`` as the body, sent as it is; the parsed JSON answer comes
        back as it is. For a route or field the typed methods do not cover yet (or a request that
        must reach the daemon unchanged, as a Ray row does): the same retries as every method, and
        the same :class:`APIStatusError` subclasses for a non-2xx answer (its ``body`` holds the
        daemon's error)."""
        return _json(self._send("POST", _route(path), json))

    def score(
        self,
        prompt: Prompt,
        candidates: Sequence[str],
        *,
        format: Optional[Format] = None,
        principle: Optional[str] = None,
        aggregate: Aggregate = "endo",
        alpha: Optional[float] = None,
        terminal: bool = False,
        return_tokens: bool = False,
        model: Optional[str] = None,
        max_candidate_tokens: Optional[int] = None,
        consensus: Optional[float] = None,
        contrast: Optional[Contrast] = None,
        reviewer: bool = False,
        reference_model: Optional[str] = None,
    ) -> ScoreResult:
        """``POST /v1/score``: score ``candidates`` (a list of texts) as answers to ``prompt``: its
        text, or a conversation (a list of ``{"role", "content"}`` messages, sent as ``messages``).

        The options are the wire's (docs/API.md): ``consensus=w`` adds the candidates' agreement
        with each other (best-of-n over samples), ``contrast="neutral"`` and ``reviewer=True``
        take the candidate's own prior out, ``reference_model`` subtracts another served model's
        score; docs/QUALITY.md says which helps where."""
        body = _score_body(prompt, candidates, _options(locals()))
        return ScoreResult.from_json(_json(self._send("POST", "/v1/score", body)))

    def rerank(
        self,
        query: str,
        documents: Sequence[Document],
        *,
        top_n: Optional[int] = None,
        max_tokens_per_doc: Optional[int] = None,
        model: Optional[str] = None,
    ) -> RerankResult:
        """``POST /v1/rerank``: ``documents`` (texts, or ``{"text": ...}``) as answers to
        ``query``, best first."""
        body = _rerank_body(query, documents, top_n, max_tokens_per_doc, model)
        return RerankResult.from_json(_json(self._send("POST", "/v1/rerank", body)))

    def best_of_n(
        self, generate: Callable[[Prompt], str], prompt: Prompt, n: int, **score_options: Any
    ) -> BestOfN:
        """Call ``generate(prompt)`` ``n`` times and score the n answers in one request;
        ``score_options`` are :meth:`score`'s keyword options."""
        options = _score_options_of(score_options)
        if not callable(generate):
            raise TypeError(f"generate must be callable, not a {type(generate).__name__}")
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        candidates = [generate(prompt) for _ in range(n)]
        return BestOfN(candidates, self.score(prompt, candidates, **options))


class AsyncClient(_BaseClient):
    """asyncio client with the same constructor and methods as :class:`Client` (awaitable)."""

    _transport = httpx.AsyncHTTPTransport
    _http_class = httpx.AsyncClient

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(
        self, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> httpx.Response:
        retries = self._retries()
        while True:
            try:
                response = await self._http.request(method, path, json=body, **kwargs)
            except _CONNECTION_ERRORS as e:
                await asyncio.sleep(retries.after_error(e))
                continue
            delay = retries.after_response(response)
            if delay is None:
                return response
            await asyncio.sleep(delay)

    async def health(self) -> Dict[str, Any]:
        try:
            response = await self._http.get("/health")
        except _CONNECTION_ERRORS as e:
            raise _connection_error(self._where, e) from e
        return _health(response)

    async def wait_ready(self, timeout: float = 60.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        pause = 0.05
        while True:
            health: Optional[Dict[str, Any]] = None
            error: Optional[Exception] = None
            try:
                health = await self.health()
                if health.get("status") != "loading":
                    return health
            except (APIConnectionError, ServiceUnavailableError) as e:
                error = e  # not up yet, or a 503 other than loading (e.g. too many connections)
            left = deadline - time.monotonic()
            if left <= 0:
                raise _ready_timeout(self._where, timeout, _not_ready(health, error))
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    async def models(self) -> List[Dict[str, Any]]:
        return _json(await self._send("GET", "/v1/models"))["data"]

    async def post(self, path: str, json: Any) -> Any:
        """Like :meth:`Client.post`."""
        return _json(await self._send("POST", _route(path), json))

    async def score(
        self,
        prompt: Prompt,
        candidates: Sequence[str],
        *,
        format: Optional[Format] = None,
        principle: Optional[str] = None,
        aggregate: Aggregate = "endo",
        alpha: Optional[float] = None,
        terminal: bool = False,
        return_tokens: bool = False,
        model: Optional[str] = None,
        max_candidate_tokens: Optional[int] = None,
        consensus: Optional[float] = None,
        contrast: Optional[Contrast] = None,
        reviewer: bool = False,
        reference_model: Optional[str] = None,
    ) -> ScoreResult:
        body = _score_body(prompt, candidates, _options(locals()))
        return ScoreResult.from_json(_json(await self._send("POST", "/v1/score", body)))

    async def rerank(
        self,
        query: str,
        documents: Sequence[Document],
        *,
        top_n: Optional[int] = None,
        max_tokens_per_doc: Optional[int] = None,
        model: Optional[str] = None,
    ) -> RerankResult:
        body = _rerank_body(query, documents, top_n, max_tokens_per_doc, model)
        return RerankResult.from_json(_json(await self._send("POST", "/v1/rerank", body)))

    async def best_of_n(
        self,
        generate: Callable[[Prompt], Union[str, Awaitable[str]]],
        prompt: Prompt,
        n: int,
        **score_options: Any,
    ) -> BestOfN:
        """Like :meth:`Client.best_of_n`. An ``async def generate`` draws the n candidates
        concurrently (bound it with a semaphore if the generator cannot take n at once); a plain
        function is called n times in turn."""
        options = _score_options_of(score_options)
        if not callable(generate):
            raise TypeError(f"generate must be callable, not a {type(generate).__name__}")
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")

        async def draw() -> str:
            out = generate(prompt)
            return await out if inspect.isawaitable(out) else out

        candidates = list(await asyncio.gather(*(draw() for _ in range(n))))
        return BestOfN(candidates, await self.score(prompt, candidates, **options))


#: The keyword options of :meth:`Client.score` (each the ``/v1/score`` field of its name).
SCORE_OPTIONS = frozenset(
    name
    for name, p in inspect.signature(Client.score).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)
