"""endorm on Ray: one ``endorm serve`` daemon per Ray actor, on the actor's node.

- :mod:`endorm.ray.data`: score a Ray Data dataset (``score_dataset``, ``EndormScorer``,
  ``drop_nulls``, also importable from here), ``pip install "endorm[ray]"``;
- :mod:`endorm.ray.serve`: a pool of daemons behind one HTTP endpoint on Ray Serve,
  ``pip install "endorm[serve]"``.

Each submodule imports only what it needs (pyarrow for Data, Ray Serve for Serve).
docs/SCALE.md has the recipes and what was tested.
"""

from __future__ import annotations

from typing import Any

_DATA = ("EndormScorer", "drop_nulls", "pool_shape", "score_dataset")


def __getattr__(name: str) -> Any:
    if name in _DATA:
        from . import data

        return getattr(data, name)
    raise AttributeError(f"module 'endorm.ray' has no attribute {name!r}")


__all__ = list(_DATA)
