"""Scoring a Ray Data dataset with endorm: one ``endorm serve`` daemon per actor.

    import ray
    from endorm.ray import drop_nulls, score_dataset

    ray.init()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    scored = score_dataset(ray.data.read_json("/shared/requests.jsonl"), model="/models/m.gguf")

Each input row is an ``endorm score`` input line: a ``/v1/score`` body with an optional ``id``.
Each output row is the line ``endorm score`` writes for it: ``{"id", ...response}`` or
``{"id", "error": {...}}``. Ray's tables fill a field that a row lacks with null, both on the way
in (dropped here before the request is sent) and on the way out (:func:`drop_nulls` gives back the
exact ``endorm score`` line). See docs/SCALE.md for what differs from ``endorm score``.

Needs ``pyarrow`` (``pip install "ray[data]"``) and the ``endorm`` binary on every node.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa

from .._client import Client
from .._exceptions import APIConnectionError, APIStatusError, ServiceUnavailableError
from ._daemon import STARTUP_TIMEOUT_S, Daemon, ray_cpus

log = logging.getLogger(__name__)

#: The most CPUs (and daemon threads) :func:`score_dataset` gives one actor by default.
DEFAULT_THREADS = 4


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


class EndormScorer:
    """A callable class for ``Dataset.map_batches(..., compute=ActorPoolStrategy(...))``.

    ``model`` is the GGUF file's absolute path, the same on every node (an actor's working
    directory is Ray's, not the driver's). Each actor starts its own ``endorm serve`` on a Unix
    socket in a private temporary directory (mode 0700), with an empty config unless ``config`` is
    given (so that, like ``endorm score``, no user config applies), and scores its batches' rows
    one by one. ``binary`` defaults to ``$ENDORM_BIN``, then ``endorm`` on PATH, *in the actor's
    environment*: pass the driver's through ``runtime_env={"env_vars": {"ENDORM_BIN": ...}}``, as
    :func:`score_dataset` does. The daemon runs with as many threads as Ray gave the actor CPUs
    (``num_cpus`` of ``map_batches``); ``serve_args`` are added to ``endorm serve``'s command line
    (``["--threads", "N"]`` there overrides that).

    With no ``config`` the daemon serves ``model`` alone and a row's ``model`` field is ignored,
    as ``endorm score`` ignores it; with a config, rows may name any model it serves.

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
        self._client: Optional[Client] = None
        self._daemon = Daemon(model, binary=binary, config=config, threads=ray_cpus(),
                              serve_args=serve_args)
        self._client = Client(self._daemon.socket, timeout=timeout)

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
        """The daemon's answer to ``request``: the response, or its error body for a 4xx.

        The row goes to the daemon as it is and its answer comes back as it is (an unknown field
        gets the daemon's own error, a field the client library does not know yet is kept), through
        :meth:`endorm.Client.post` rather than its typed ``score``. A 503 (the model still loading)
        is waited through for as long as the daemon may take to start; a 5xx raises the client's
        :class:`~endorm.APIStatusError` for it, a daemon that does not answer
        :class:`~endorm.APIConnectionError` (RuntimeError, with its log, if it exited)."""
        assert self._client is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                answer = self._client.post("/v1/score", request)
            except ServiceUnavailableError as e:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(float(e.response.headers.get("retry-after", "1")))
                continue
            except APIStatusError as e:
                error = e.body.get("error") if isinstance(e.body, dict) else None
                if e.status_code >= 500 or not isinstance(error, dict):
                    raise
                return {"error": error}
            except APIConnectionError:
                self._daemon.check()
                raise
            if not isinstance(answer, dict):
                raise RuntimeError(f"endorm serve answered a score with {answer!r}")
            return answer

    def close(self) -> None:
        """Stops the daemon and removes its directory (also done when the actor ends cleanly)."""
        if getattr(self, "_client", None) is not None:
            self._client.close()
            self._client = None
        if getattr(self, "_daemon", None) is not None:
            self._daemon.close()

    def __del__(self) -> None:
        # Ray Data drops the callable when an actor shuts down gracefully.
        self.close()


def pool_shape(
    node_cpus: Sequence[float], threads: Optional[int] = None, actors: Optional[int] = None
) -> Tuple[int, int]:
    """``(actors, threads)`` for an actor pool on nodes with ``node_cpus`` CPUs each.

    Ray Data starts a fixed pool's actors before its read tasks, and a read task needs a CPU of
    its own: a pool that takes every CPU waits forever (ray-project/ray#44687). So the defaults
    leave one CPU free: ``threads`` (each actor's CPUs, its daemon's threads) is at most
    :data:`DEFAULT_THREADS`, at most the largest node's CPUs and at most all CPUs but one; ``actors``
    is as many as fit on the nodes, whole, with one CPU left over. Values given are checked the
    same way and refused with the reason if they cannot run.
    """
    cpus = [int(c) for c in node_cpus if c >= 1]
    total = sum(cpus)
    if total < 2:
        raise ValueError(
            f"the Ray cluster has {total} CPU(s): an actor pool needs one for an actor and one for "
            "Ray Data's read tasks"
        )
    if threads is None:
        threads = min(DEFAULT_THREADS, max(cpus), total - 1)
    if threads < 1 or threads > max(cpus):
        raise ValueError(f"threads={threads}: each actor needs 1 to {max(cpus)} CPUs (one node's)")
    fit = sum(c // threads for c in cpus)
    if fit * threads > total - 1:
        fit -= 1  # the last one would take the read tasks' CPU
    if fit < 1:
        raise ValueError(
            f"threads={threads}: no actor of {threads} CPUs fits beside a free CPU on these nodes "
            f"({cpus} CPUs); use fewer threads"
        )
    if actors is None:
        actors = fit
    elif actors < 1 or actors > fit:
        raise ValueError(
            f"actors={actors}: at most {fit} actors of {threads} CPUs fit on these nodes ({cpus} "
            "CPUs) with one CPU left for Ray Data's read tasks; a pool that takes them all waits "
            "forever (ray-project/ray#44687)"
        )
    return actors, threads


def score_dataset(
    dataset: Any,
    model: str,
    *,
    threads: Optional[int] = None,
    actors: Optional[int] = None,
    batch_size: int = 16,
    binary: Optional[str] = None,
    config: Optional[str] = None,
    serve_args: Sequence[str] = (),
    timeout: Optional[float] = 600.0,
) -> Any:
    """``dataset`` scored by a pool of :class:`EndormScorer` actors sized to the Ray cluster.

    ``threads`` CPUs per actor (its daemon's threads) and ``actors`` actors default to what
    :func:`pool_shape` finds on the cluster's alive nodes now (one CPU left free for Ray Data's
    reads). ``binary`` defaults to this process's ``$ENDORM_BIN``; either reaches the actors
    through Ray's ``runtime_env`` (absolute; the same path on every node); without both, each
    actor looks for ``endorm`` on its own PATH. ``model`` and ``config`` are paths on the nodes.
    """
    import ray

    node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    actors, threads = pool_shape(node_cpus, threads, actors)
    binary = binary or os.environ.get("ENDORM_BIN")
    env: Dict[str, Any] = {}
    if binary:
        env = {"env_vars": {"ENDORM_BIN": os.path.abspath(binary)}}
    log.info("endorm: %d actor(s) of %d CPU(s) on %s", actors, threads, node_cpus)
    return dataset.map_batches(
        EndormScorer,
        fn_constructor_kwargs={"model": model, "config": config, "serve_args": list(serve_args),
                               "timeout": timeout},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads,
        batch_size=batch_size,
        batch_format="pyarrow",
        runtime_env=env or None,
    )


__all__: List[str] = ["EndormScorer", "drop_nulls", "pool_shape", "score_dataset"]
