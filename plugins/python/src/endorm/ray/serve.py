"""A served pool of endorm daemons on Ray Serve: one daemon per replica, one HTTP endpoint.

    from ray import serve
    from endorm.ray.serve import build

    serve.run(build(model="/models/model.gguf", threads=4, min_replicas=2, max_replicas=8))

or, in a Serve config (``serve run config.yaml``, KubeRay's ``RayService``)::

    applications:
      - name: endorm
        import_path: endorm.ray.serve:app
        route_prefix: /
        args: {model: /models/model.gguf, threads: 4, min_replicas: 2, max_replicas: 8}

Each replica starts its own ``endorm serve`` on a Unix socket in a private directory on its node
and passes every request to it unchanged: any route (``/v1/score``, ``/v1/rerank``, ``/v2/rerank``,
``/rerank``, ``/get_reward``, ``/health``, ``/v1/models``, ...), its body, and the daemon's status,
body and headers (``Retry-After`` included) back. Serve's health check asks the daemon's
``/health``: a replica whose daemon died, or runs but does not answer, fails it, and after three
failures in a row Serve stops routing to it and replaces it (with a new daemon). The requests the
daemon had in flight are answered 503 with ``Retry-After: 1``, those that reach the replica
afterwards the same once Serve can have taken it out of rotation, so that a client's retry goes to
another replica. Serve scales the replicas between ``min_replicas`` and ``max_replicas`` on the
requests each has in flight or queued (``target_ongoing_requests``). docs/SCALE.md has the recipe.

Needs ``pip install "endorm[serve]"`` (Ray Serve) and the ``endorm`` binary on every node.
"""

import asyncio
import hmac
import logging
import os
import threading
import time
from typing import Any, Dict, List, Literal, Optional

import httpx
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._daemon import Daemon

log = logging.getLogger(__name__)

#: Request headers passed on to the daemon; the others (``Authorization`` first) stay here.
FORWARDED = ("content-type", "accept", "x-endorm-client", "user-agent")
#: Response headers of the daemon not passed back: the connection's own, set again by the proxy.
HOP_BY_HOP = ("connection", "keep-alive", "transfer-encoding", "content-length", "date", "server")
#: A token shorter than this is refused, as the daemon refuses one (128 bits as hex).
MIN_TOKEN_CHARS = 32


def _error(status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None) -> Response:
    """An error in the daemon's shape, ``{"error": {"message", "type", "code"}}``."""
    kind = {401: "authentication_error", 404: "not_found_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    body = {"error": {"message": message, "type": kind, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _bearer(value: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer TOKEN`` value (the scheme in any case)."""
    scheme, _, token = (value or "").strip().partition(" ")
    token = token.lstrip(" ")
    return token if scheme.lower() == "bearer" and token else None


class EndormReplica:
    """One replica: its own ``endorm serve --model MODEL --threads THREADS`` and a proxy to it.

    ``auth="token"`` (the default) wants ``Authorization: Bearer TOKEN`` on every request, as the
    daemon's TCP listener does: ``token``, else ``$ENDORM_TOKEN`` in the replica's environment,
    at least 32 characters. ``auth="none"`` serves anyone who reaches Serve's port (OpenRLHF's
    reward client sends no token): keep that port on a private network.
    """

    def __init__(
        self,
        model: str,
        threads: int = 1,
        binary: Optional[str] = None,
        config: Optional[str] = None,
        serve_args: List[str] = [],  # noqa: B006 (never mutated)
        auth: str = "token",
        token: Optional[str] = None,
        timeout: Optional[float] = 600.0,
        health_check_period_s: float = 1.0,
    ) -> None:
        self._token: Optional[bytes] = None
        if auth == "token":
            token = token or os.environ.get("ENDORM_TOKEN")
            if not token or len(token) < MIN_TOKEN_CHARS:
                raise ValueError(
                    f"auth='token' needs a token of at least {MIN_TOKEN_CHARS} characters: pass "
                    "token=... or set ENDORM_TOKEN in the replicas' environment (a runtime_env's "
                    "env_vars, or the pod's env); auth='none' turns it off"
                )
            self._token = token.encode()
        elif auth != "none":
            raise ValueError(f"auth={auth!r}: 'token' or 'none'")
        self._closing = False
        self._dead_at: Optional[float] = None
        # Serve marks a replica unhealthy after three failed health checks in a row
        # (REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD) and then routes no more requests to it.
        self._hold_s = 3 * health_check_period_s + 1
        self._daemon = Daemon(model, binary=binary, config=config, threads=threads,
                              serve_args=serve_args)
        threading.Thread(target=self._watch, name="endorm-watch", daemon=True).start()
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self._daemon.socket),
            base_url="http://endorm",
            timeout=timeout,
        )
        log.info("endorm serve (pid %s) on %s", self._daemon.pid, self._daemon.socket)

    def _watch(self) -> None:
        """Waits for the daemon, and notes when it died (unless this replica stopped it)."""
        proc = self._daemon.proc
        assert proc is not None
        code = proc.wait()
        if not self._closing:
            self._dead_at = time.monotonic()
            log.error("endorm serve (pid %s) exited %s; this replica fails its health checks "
                      "until Serve replaces it. Its log: %s", proc.pid, code,
                      self._daemon.log_tail())

    async def __call__(self, request: Request) -> Response:
        if self._token is not None:
            given = _bearer(request.headers.get("authorization"))
            if given is None or not hmac.compare_digest(given.encode(), self._token):
                return _error(401, "invalid_token",
                              "requests need `Authorization: Bearer TOKEN`, with the pool's token",
                              {"WWW-Authenticate": "Bearer"})
        # Serve gives the whole path; the application's route prefix is the scope's root_path.
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if self._dead_at is not None:
            # The daemon is gone and Serve will replace this replica once its health checks have
            # failed. A 503 at once would make this replica look the least busy and draw the
            # retries too; held until then, they go to the other replicas.
            await asyncio.sleep(max(0.0, self._dead_at + self._hold_s - time.monotonic()))
            return self._unavailable()
        query = request.scope.get("query_string", b"").decode("latin-1")
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED}
        if "x-endorm-client" not in headers and request.client is not None:
            # The daemon's queue takes its clients in turn; on TCP a client is its connection.
            headers["x-endorm-client"] = f"{request.client.host}:{request.client.port}"
        try:
            answer = await self._http.request(
                request.method, path + (f"?{query}" if query else ""),
                content=await request.body(), headers=headers,
            )
        except httpx.TimeoutException as e:
            return _error(504, "daemon_timeout", f"this replica's endorm daemon did not answer: {e}")
        except httpx.TransportError as e:
            # The daemon died with the request (its answer is lost): another replica can take it.
            return self._unavailable(e)
        kept = {k: v for k, v in answer.headers.items() if k not in HOP_BY_HOP}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    def _unavailable(self, error: Optional[Exception] = None) -> Response:
        code = self._daemon.exit_code()
        why = f"exited ({code})" if code is not None else f"did not answer ({error})"
        return _error(503, "daemon_unavailable", f"this replica's endorm daemon {why}; retry",
                      {"Retry-After": "1"})

    async def check_health(self) -> None:
        """Serve's health check: the daemon runs and its ``/health`` says ``ok`` or ``loading``."""
        self._daemon.check()
        try:
            health = (await self._http.get("/health", timeout=10)).json()
        except (httpx.HTTPError, ValueError) as e:
            raise RuntimeError(f"endorm serve does not answer /health: {e}") from e
        if health.get("status") not in ("ok", "loading"):
            raise RuntimeError(f"endorm serve is not healthy: {health}")

    def __del__(self) -> None:
        # Serve calls this when it stops the replica; a killed replica's daemon sees its stdin close.
        self._closing = True
        if getattr(self, "_daemon", None) is not None:
            self._daemon.close()


class PoolArgs(BaseModel):
    """The arguments of :func:`build`, as a Serve config's ``args`` gives them to :func:`app`."""

    model_config = ConfigDict(extra="forbid")

    model: str
    threads: int = Field(1, ge=1)
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2, gt=0)
    max_ongoing_requests: int = Field(8, ge=1)
    autoscaling: Dict[str, Any] = {}
    health_check_period_s: float = Field(1, gt=0)
    binary: Optional[str] = None
    config: Optional[str] = None
    serve_args: List[str] = []
    auth: Literal["token", "none"] = "token"
    token: Optional[str] = None
    timeout: Optional[float] = 600.0


def build(model: str, **options: Any) -> Application:
    """The Serve application: :class:`EndormReplica` with ``threads`` CPUs each (its daemon's
    threads), ``min_replicas`` to ``max_replicas`` of them, scaled on ``target_ongoing_requests``
    (requests in flight or queued per replica; ``autoscaling`` adds Serve's other
    ``autoscaling_config`` keys, e.g. ``upscale_delay_s``), at most ``max_ongoing_requests`` at a
    replica at once (the rest wait in Serve's queue, below the daemon's own ``queue_depth``), a
    health check every ``health_check_period_s``. ``binary`` (else this process's
    ``$ENDORM_BIN``) reaches the replicas through Ray's ``runtime_env``; without either, each
    replica looks for ``endorm`` on its own PATH. The other options are :class:`EndormReplica`'s.
    """
    args = PoolArgs(model=model, **options)
    if args.min_replicas > args.max_replicas:
        raise ValueError(f"min_replicas ({args.min_replicas}) > max_replicas ({args.max_replicas})")
    actor: Dict[str, Any] = {"num_cpus": args.threads}
    binary = args.binary or os.environ.get("ENDORM_BIN")
    if binary:
        actor["runtime_env"] = {"env_vars": {"ENDORM_BIN": os.path.abspath(binary)}}
    autoscaling = {
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": args.target_ongoing_requests,
        **args.autoscaling,
    }
    deployment = serve.deployment(EndormReplica).options(
        name="endorm",
        ray_actor_options=actor,
        autoscaling_config=autoscaling,
        max_ongoing_requests=args.max_ongoing_requests,
        health_check_period_s=args.health_check_period_s,
    )
    return deployment.bind(
        model=args.model, threads=args.threads, config=args.config, serve_args=args.serve_args,
        auth=args.auth, token=args.token, timeout=args.timeout,
        health_check_period_s=args.health_check_period_s,
    )


def app(args: Dict[str, Any]) -> Application:
    """The application builder for Serve configs: ``import_path: endorm.ray.serve:app`` with
    ``args`` as :func:`build`'s keyword arguments."""
    return build(**args)


__all__ = ["EndormReplica", "PoolArgs", "app", "build"]
