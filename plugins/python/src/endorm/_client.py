"""Sync and async clients for the endorm daemon over its Unix socket (docs/API.md)."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import httpx

from ._types import BestOfN, EndormError, RerankResult, ScoreResult

Message = Mapping[str, str]
Document = Union[str, Mapping[str, str]]


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


def _no_daemon(where: str, err: Exception) -> EndormError:
    if where.startswith(("http://", "https://")):
        hint = "start it with `endorm serve --listen HOST:PORT` (or pass url=... where it listens)"
    else:
        hint = ("start it with `endorm serve` (or pass socket=... / set ENDORM_SOCKET to where it "
                "listens)")
    return EndormError(0, "no_daemon", f"cannot reach the endorm daemon at {where} ({err}); {hint}")


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


def _check(resp: httpx.Response) -> Any:
    """The JSON body of a 2xx answer; otherwise raise EndormError with the daemon's message."""
    if resp.is_success:
        return resp.json()
    code: Optional[str] = None
    message = resp.text
    try:
        err = resp.json().get("error", {})
        message = err.get("message", message)
        code = err.get("code") or err.get("type")
    except (ValueError, AttributeError):
        pass
    raise EndormError(resp.status_code, code, message)


def _score_body(
    candidates: Sequence[str], messages: Optional[Sequence[Message]], **fields: Any
) -> Dict[str, Any]:
    """The ``/v1/score`` body: the fields given, without the ones left at ``None`` or ``False``
    (the daemon's defaults), so that the body says only what the caller asked for."""
    body: Dict[str, Any] = {"candidates": list(candidates)}
    if messages is not None:
        body["messages"] = [dict(m) for m in messages]
    body.update({k: v for k, v in fields.items() if v is not None and v is not False})
    return body


def _rerank_body(
    query: str, documents: Sequence[Document], top_n: Optional[int], model: Optional[str]
) -> Dict[str, Any]:
    body: Dict[str, Any] = {
        "query": query,
        "documents": [d if isinstance(d, str) else dict(d) for d in documents],
        "return_documents": True,
    }
    if top_n is not None:
        body["top_n"] = top_n
    if model is not None:
        body["model"] = model
    return body


class _Connected:
    """Where a client talks and its httpx client; the subclasses name httpx's sync or async classes."""

    _transport: Any
    _http_class: Any

    def __init__(
        self,
        socket: Optional[str] = None,
        timeout: float = 120.0,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
    ) -> None:
        self.socket, self._where, kwargs = _connection(socket, url, token, self._transport)
        self._http = self._http_class(timeout=timeout, **kwargs)


class Client(_Connected):
    """Blocking client. ``socket`` defaults to :func:`default_socket`; ``url`` (e.g.
    ``"http://127.0.0.1:8765"``, the daemon's ``--listen`` address) talks TCP instead, with
    ``token`` or ``$ENDORM_TOKEN`` as its bearer token. ``timeout`` is in seconds.

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

    def _request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as e:
            raise _no_daemon(self._where, e) from e
        return _check(resp)

    def health(self) -> Dict[str, Any]:
        """``GET /health``: ``{"status": "ok"|"loading"|"degraded", "models": [...]}``."""
        return self._request("GET", "/health")

    def models(self) -> List[Dict[str, Any]]:
        """``GET /v1/models``: the served models (``id``, ``meta``, ...)."""
        return self._request("GET", "/v1/models")["data"]

    def score(
        self,
        candidates: Sequence[str],
        prompt: Optional[str] = None,
        messages: Optional[Sequence[Message]] = None,
        format: Optional[str] = None,
        principle: Optional[str] = None,
        aggregate: str = "endo",
        alpha: Optional[float] = None,
        terminal: bool = False,
        return_tokens: bool = False,
        model: Optional[str] = None,
        max_candidate_tokens: Optional[int] = None,
        consensus: Optional[float] = None,
        contrast: Optional[str] = None,
        reviewer: bool = False,
        reference_model: Optional[str] = None,
    ) -> ScoreResult:
        """``POST /v1/score``: score ``candidates`` as answers to ``prompt`` (or ``messages``).

        The options are the wire's (docs/API.md): ``consensus=w`` adds the candidates' agreement
        with each other (best-of-n over samples), ``contrast="neutral"`` and ``reviewer=True``
        take the candidate's own prior out, ``reference_model`` subtracts another served model's
        score; docs/QUALITY.md says which helps where."""
        body = _score_body(
            candidates, messages, prompt=prompt, format=format, principle=principle,
            aggregate=aggregate, alpha=alpha, terminal=terminal, return_tokens=return_tokens,
            model=model, max_candidate_tokens=max_candidate_tokens, consensus=consensus,
            contrast=contrast, reviewer=reviewer, reference_model=reference_model,
        )
        return ScoreResult.from_json(self._request("POST", "/v1/score", body))

    def rerank(
        self,
        query: str,
        documents: Sequence[Document],
        top_n: Optional[int] = None,
        model: Optional[str] = None,
    ) -> RerankResult:
        """``POST /v1/rerank``: ``documents`` as answers to ``query``, best first."""
        body = _rerank_body(query, documents, top_n, model)
        return RerankResult.from_json(self._request("POST", "/v1/rerank", body))

    def best_of_n(
        self, generate: Callable[[str], str], prompt: str, n: int, **score_kwargs: Any
    ) -> BestOfN:
        """Call ``generate(prompt)`` ``n`` times and score all candidates in one request."""
        candidates = [generate(prompt) for _ in range(n)]
        return BestOfN(candidates, self.score(candidates, prompt=prompt, **score_kwargs))


class AsyncClient(_Connected):
    """asyncio client with the same methods as :class:`Client` (all awaitable)."""

    _transport = httpx.AsyncHTTPTransport
    _http_class = httpx.AsyncClient

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        try:
            resp = await self._http.request(method, path, json=body)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as e:
            raise _no_daemon(self._where, e) from e
        return _check(resp)

    async def health(self) -> Dict[str, Any]:
        return await self._request("GET", "/health")

    async def models(self) -> List[Dict[str, Any]]:
        return (await self._request("GET", "/v1/models"))["data"]

    async def score(
        self,
        candidates: Sequence[str],
        prompt: Optional[str] = None,
        messages: Optional[Sequence[Message]] = None,
        format: Optional[str] = None,
        principle: Optional[str] = None,
        aggregate: str = "endo",
        alpha: Optional[float] = None,
        terminal: bool = False,
        return_tokens: bool = False,
        model: Optional[str] = None,
        max_candidate_tokens: Optional[int] = None,
        consensus: Optional[float] = None,
        contrast: Optional[str] = None,
        reviewer: bool = False,
        reference_model: Optional[str] = None,
    ) -> ScoreResult:
        body = _score_body(
            candidates, messages, prompt=prompt, format=format, principle=principle,
            aggregate=aggregate, alpha=alpha, terminal=terminal, return_tokens=return_tokens,
            model=model, max_candidate_tokens=max_candidate_tokens, consensus=consensus,
            contrast=contrast, reviewer=reviewer, reference_model=reference_model,
        )
        return ScoreResult.from_json(await self._request("POST", "/v1/score", body))

    async def rerank(
        self,
        query: str,
        documents: Sequence[Document],
        top_n: Optional[int] = None,
        model: Optional[str] = None,
    ) -> RerankResult:
        body = _rerank_body(query, documents, top_n, model)
        return RerankResult.from_json(await self._request("POST", "/v1/rerank", body))

    async def best_of_n(
        self,
        generate: Callable[[str], Union[str, Awaitable[str]]],
        prompt: str,
        n: int,
        **score_kwargs: Any,
    ) -> BestOfN:
        """Like :meth:`Client.best_of_n`; ``generate`` may be sync or async (awaited in turn)."""
        candidates: List[str] = []
        for _ in range(n):
            out = generate(prompt)
            candidates.append(await out if inspect.isawaitable(out) else out)  # type: ignore[misc]
        return BestOfN(candidates, await self.score(candidates, prompt=prompt, **score_kwargs))
