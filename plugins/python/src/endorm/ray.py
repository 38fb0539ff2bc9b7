"""Scoring a Ray Data dataset with endorm: one ``endorm serve`` daemon per actor.

    import ray
    from endorm.ray import EndormScorer

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    scored = ray.data.read_json("requests.jsonl").map_batches(
        EndormScorer,
        fn_constructor_kwargs={"model": "/models/model.gguf", "serve_args": ["--threads", "4"]},
        compute=ray.data.ActorPoolStrategy(size=8),
        num_cpus=4,
        batch_size=16,
        batch_format="pyarrow",
    )

Each input row is an ``endorm score`` input line: a ``/v1/score`` body with an optional ``id``.
Each output row is the line ``endorm score`` writes for it: ``{"id", ...response}`` or
``{"id", "error": {...}}``. Ray's tables fill a field that a row lacks with null, both on the way
in (dropped here before the request is sent) and on the way out (:func:`drop_nulls` gives back the
exact ``endorm score`` line). See docs/SCALE.md for what differs from ``endorm score``.

Needs ``pyarrow`` (``pip install "ray[data]"``) and the ``endorm`` binary on every node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import httpx
import pyarrow as pa

from ._types import EndormError

#: How long a daemon may take to load its model and answer ``/health``.
STARTUP_TIMEOUT_S = 300.0


def drop_nulls(value: Any) -> Any:
    """``value`` without the null fields a Ray table adds to rows that lack them, recursively.

    No field of an ``endorm score`` line or a ``/v1/score`` request is null when present, so this
    turns a Ray row back into the JSON object it stands for.
    """
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def _binary(binary: Optional[str]) -> str:
    found = binary or os.environ.get("ENDORM_BIN") or shutil.which("endorm")
    if not found:
        raise FileNotFoundError(
            "no endorm binary: pass binary=..., set ENDORM_BIN, or put endorm on PATH on every node"
        )
    return str(found)


class EndormScorer:
    """A callable class for ``Dataset.map_batches(..., compute=ActorPoolStrategy(...))``.

    ``model`` is the GGUF file's absolute path, the same on every node (an actor's working
    directory is Ray's, not the driver's). Each actor starts its own ``endorm serve`` on a Unix socket in a private temporary directory
    (mode 0700), with an empty config unless ``config`` is given (so that, like ``endorm score``,
    no user config applies), and scores its batches' rows one by one. ``binary`` defaults to
    ``$ENDORM_BIN``, then ``endorm`` on PATH; ``serve_args`` are added to ``endorm serve``'s
    command line (e.g. ``["--threads", "4"]`` to match the actor's ``num_cpus``).

    With no ``config`` the daemon serves ``model`` alone and a row's ``model`` field is ignored,
    as ``endorm score`` ignores it; with a config, rows may name any model it serves.

    The daemon is started with ``--exit-on-eof`` and a pipe as its standard input: when the actor
    process ends, even killed, the kernel closes the pipe and the daemon stops.

    A row the daemon refuses (4xx) becomes an error row, like an ``endorm score`` error line. A
    daemon that fails (5xx, or dies) raises, failing the batch, as ``endorm score`` stops on a model
    that cannot decode: no row is ever dropped.
    """

    def __init__(
        self,
        model: str,
        binary: Optional[str] = None,
        config: Optional[str] = None,
        serve_args: Sequence[str] = (),
        timeout: Optional[float] = 600.0,
    ) -> None:
        self._one_model = config is None
        self._proc: Optional[subprocess.Popen] = None
        self._http: Optional[httpx.Client] = None
        # mkdtemp makes the directory 0700: only this user can reach the socket.
        self._dir = tempfile.mkdtemp(prefix="endorm-ray-")
        try:
            self._start(_binary(binary), model, config, serve_args, timeout)
        except BaseException:
            self.close()
            raise

    def _start(
        self,
        binary: str,
        model: str,
        config: Optional[str],
        serve_args: Sequence[str],
        timeout: Optional[float],
    ) -> None:
        socket = os.path.join(self._dir, "endorm.sock")
        if config is None:
            config = os.path.join(self._dir, "endorm.toml")
            Path(config).write_text("")
        self._log = os.path.join(self._dir, "serve.log")
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [binary, "serve", "--socket", socket, "--config", str(config), "--model",
                 str(model), "--exit-on-eof", *serve_args],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=socket), base_url="http://endorm", timeout=timeout
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            self._check_alive()
            try:
                if self._http.get("/health", timeout=5).json().get("status") == "ok":
                    return
            except (httpx.HTTPError, OSError, ValueError):  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"endorm serve did not become healthy in {STARTUP_TIMEOUT_S:.0f} s: "
                    f"{self._log_tail()}"
                )
            time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            return Path(self._log).read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"endorm serve exited {self._proc.returncode}: {self._log_tail()}")

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not isinstance(batch, pa.Table):
            raise TypeError(
                f"EndormScorer takes pyarrow batches, not {type(batch).__name__}: pass "
                "batch_format=\"pyarrow\" to map_batches"
            )
        lines = [self.score_row(row) for row in batch.to_pylist()]
        # Every field of every line: from_pylist would take the first line's fields only and drop
        # an error line's `error` beside a scored one (or the other way round).
        fields = list(dict.fromkeys(k for line in lines for k in line))
        return pa.table({k: [line.get(k) for line in lines] for k in fields})

    def score_row(self, row: Dict[str, Any]) -> Dict[str, Any]:
        """The ``endorm score`` output line for one input row (a dict)."""
        request = drop_nulls(row)
        # A Ray row has no line number for `endorm score`'s default id: no id stays null.
        line: Dict[str, Any] = {"id": request.pop("id", None)}
        if self._one_model:
            # `endorm score` scores every line on its one model, whatever the line's `model` says.
            request.pop("model", None)
        line.update(self._post(request))
        return line

    def _post(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """The daemon's answer to ``request``: the response, or its error body for a 4xx."""
        assert self._http is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                resp = self._http.post("/v1/score", json=request)
            except httpx.TransportError as e:
                self._check_alive()
                raise EndormError(0, "no_daemon", f"endorm serve did not answer: {e}") from e
            # 503: the model is loading or the queue is full; wait as the daemon asks, for a while.
            if resp.status_code == 503 and time.monotonic() < deadline:
                time.sleep(float(resp.headers.get("retry-after", "1")))
                continue
            break
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.is_success and isinstance(body, dict):
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if resp.status_code >= 500 or not isinstance(error, dict):
            message = error.get("message") if isinstance(error, dict) else resp.text
            code = error.get("code") if isinstance(error, dict) else None
            raise EndormError(resp.status_code, code, str(message))
        return {"error": error}

    def close(self) -> None:
        """Stops the daemon and removes its directory (also done when the actor ends cleanly)."""
        if self._http is not None:
            self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()  # --exit-on-eof: the daemon finishes and exits
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self) -> None:
        # Ray Data drops the callable when an actor shuts down gracefully.
        if hasattr(self, "_dir"):
            self.close()


__all__ = ["EndormScorer", "drop_nulls"]
