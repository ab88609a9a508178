"""``implementation="auto"``: the measured-fastest implementation for an op's shapes.

The rule reads the rankings measured by ``experiments/bench/auto.py`` on each backend
(``benchmarks/auto/*.json``, turned into :mod:`lrnn.ops._auto_table` by its ``derive`` step):
at the measured point nearest to the call (distance in log2 of T, B, H and dk, plus |n_h
difference|, the same dtype preferred), it takes the fastest implementation that is available
here. A backend without measurements (TPU today) gets "chunked", the XLA chunked form.
Everything is decided at trace time from static shapes and dtypes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lrnn.ops._auto_table import TABLE

__all__ = ["choose", "FALLBACK"]

FALLBACK = "chunked"
# a family without measurements borrows those of a close one (the n_h distance applies)
NEAREST_FAMILY = {"delta_product": "delta"}


def _distance(p: dict, dims: dict) -> float:
    d = 0.0
    for name in ("T", "B", "H", "dk"):
        d += abs(math.log2(max(dims[name], 1)) - math.log2(max(p[name], 1)))
    return d + abs(dims.get("n_h", 1) - p["n_h"])


def choose(family: str, dims: dict, dtype, available: tuple[str, ...],
           backend: str | None = None) -> str:
    """The implementation ``"auto"`` means for one call.

    Args:
      family: "linear_recurrence" | "gla" | "delta" (n_h = 1) | "delta_product" (without
        points of its own: those of "delta") | "selective" (Mamba's scan, ``dk = D N``) | any
        other (no measurements: the fallback).
      dims: ``B, T, H, dk`` (and ``n_h``) of the call; ``H = 1`` and ``dk = D`` for the
        diagonal recurrence.
      dtype: the inputs' dtype.
      available: the implementations that can run here.
      backend: defaults to ``jax.default_backend()``.
    """
    backend = backend or jax.default_backend()
    measured = TABLE.get(backend, {}).get("points", ())
    points = [p for p in measured if p["family"] == family]
    if not points and family in NEAREST_FAMILY:
        points = [p for p in measured if p["family"] == NEAREST_FAMILY[family]]
    name = jnp.dtype(dtype).name
    same = [p for p in points if p["dtype"] == name]
    points = same or points
    if not points:
        return FALLBACK if FALLBACK in available else available[0]
    best = min(points, key=lambda p: _distance(p, dims))
    for impl in best["ranking"]:
        if impl in available:
            return impl
    return FALLBACK
