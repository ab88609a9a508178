"""The diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` (vector state).

Implementations: "sequential" (``lax.scan`` over tokens, the reference), "scan"
(``lrnn.scan`` over per-token DIAGONAL elements), "chunked" (a tree scan inside chunks of
``chunk_size`` tokens, in parallel over all chunks, then a loop or scan over the chunk
summaries, then the correction ``h_t += (prod_{r<=t} a_r) h_in``; products only, never
divided), "pallas" (``pallas_kernels.linear_recurrence``) and "auto".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lrnn import _compat
from lrnn.monoid import DIAGONAL, Affine
from lrnn.monoid import scan as monoid_scan
from lrnn.ops import _common as c

__all__ = ["linear_recurrence", "linear_recurrence_step", "linear_recurrence_summary"]

_OP = "linear_recurrence"


def _validate(a, b, h0, op=_OP):
    a = c.as_float(a, "a", op)
    b = c.as_float(b, "b", op)
    c.check_shape(a, (None, None, None), "a", op, "[B, T, D]")
    c.check_shape(b, a.shape, "b", op, f"[B, T, D] like a {a.shape}")
    if h0 is not None:
        h0 = c.as_float(h0, "h0", op)
        c.check_shape(h0, (a.shape[0], a.shape[2]), "h0", op, "[B, D]")
    return a, b, h0


def _sequential(a, b, h0):
    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    _, h = lax.scan(step, h0, (jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0)))
    return jnp.moveaxis(h, 0, 1)


def _chunk_local(a, b, C):
    """Per chunk, from a zero state: cumulative products P and local states h.

    Returns ``(P, h)`` both ``[B, N, C, D]``.
    """
    ac = c.to_chunks(a, C, 1.0)
    bc = c.to_chunks(b, C, 0.0)
    P, h = _compat.associative_scan(DIAGONAL.combine, Affine(ac, bc), axis=2)
    return P, h


def _chunked(a, b, h0, C, chunk_combine):
    T = a.shape[1]
    P, h = _chunk_local(a, b, C)
    summaries = Affine(P[:, :, -1], h[:, :, -1])  # [B, N, D]
    h_in, _ = c.combine_chunks(DIAGONAL, summaries, h0, axis=1, chunk_combine=chunk_combine)
    h = h + P * h_in[:, :, None]
    B, N, _, D = h.shape
    return h.reshape(B, N * C, D)[:, :T]


def linear_recurrence_summary(a, b, *, chunk_size: int = 64) -> Affine:
    """The whole sequence as one DIAGONAL element ``(prod_t a_t, h_T from h0 = 0)``.

    Args:
      a: ``[B, T, D]``.
      b: ``[B, T, D]``.
      chunk_size: the chunk length of the chunked pass that computes it.

    Returns:
      ``Affine(A [B, D], b [B, D])`` in at least float32.
    """
    a, b, _ = _validate(a, b, None, "linear_recurrence_summary")
    C = min(c.check_positive_int(chunk_size, "chunk_size", "linear_recurrence_summary"),
            a.shape[1])
    dt = c.calc_dtype(a, b)
    P, h = _chunk_local(a.astype(dt), b.astype(dt), C)
    return c.fold_chunks(DIAGONAL, Affine(P[:, :, -1], h[:, :, -1]), axis=1)


def linear_recurrence(
    a,
    b,
    h0=None,
    *,
    implementation: str = "auto",
    chunk_size: int = 64,
    chunk_combine: str = "loop",
    axis_name=None,
    exchange: str = "all_gather",
) -> jax.Array:
    """All states of ``h_t = a_t * h_{t-1} + b_t``.

    Args:
      a: ``[B, T, D]`` the diagonal transitions (any sign).
      b: ``[B, T, D]`` the inputs.
      h0: ``[B, D]`` the state before the first step; zeros if None.
      implementation: "sequential" | "scan" | "chunked" | "pallas" | "auto".
      chunk_size: tokens per chunk of the chunked form (positive int).
      chunk_combine: how the chunked form crosses chunks: "loop" (``lax.scan``) or "scan"
        (``lrnn.scan``).
      axis_name: set when called inside ``jax.shard_map`` with the time axis sharded over
        this mesh axis; the shards exchange summaries (``lrnn.parallel.shard_prefix``).
      exchange: how shard summaries are exchanged (see ``lrnn.parallel``).

    Returns:
      h ``[B, T, D]`` in the dtype of the inputs (arithmetic in at least float32).
    """
    a, b, h0 = _validate(a, b, h0)
    impl = c.resolve_implementation(
        implementation, _OP, "linear_recurrence", family="linear_recurrence",
        dims=dict(B=a.shape[0], T=a.shape[1], H=1, dk=a.shape[2]), dtype=c.out_dtype(a, b))
    chunk_size = c.check_positive_int(chunk_size, "chunk_size", _OP)
    c.check_choice(chunk_combine, c.CHUNK_COMBINES, "chunk_combine", _OP)
    c.check_sequence_axis(axis_name, exchange, _OP)
    if c.empty(a, b) and axis_name is None:
        impl = "sequential"
    out_dt = c.out_dtype(a, b)
    dt = c.calc_dtype(a, b, h0)
    if axis_name is not None:
        summary = linear_recurrence_summary(a, b, chunk_size=chunk_size)
        h0z = jnp.zeros(summary.b.shape, dt) if h0 is None else h0.astype(dt)
        h0, _ = c.shard_prefix(DIAGONAL, summary, h0z, axis_name=axis_name, exchange=exchange)
    if impl == "pallas":
        fn = c.pallas_fn("linear_recurrence", _OP)
        return fn(a, b, None if h0 is None else h0.astype(dt), interpret=None)
    T = a.shape[1]
    a32, b32 = a.astype(dt), b.astype(dt)
    h0 = jnp.zeros((a.shape[0], a.shape[2]), dt) if h0 is None else h0.astype(dt)
    if impl == "sequential":
        h = _sequential(a32, b32, h0)
    elif impl == "scan":
        h = monoid_scan(DIAGONAL, Affine(a32, b32), h0, axis=1)
    else:
        h = _chunked(a32, b32, h0, min(chunk_size, T), chunk_combine)
    return h.astype(out_dt)


def linear_recurrence_step(a, b, h=None):
    """One step ``h <- a * h + b`` (decoding).

    Args:
      a: ``[B, D]``.
      b: ``[B, D]``.
      h: ``[B, D]`` the previous state; zeros if None.

    Returns:
      the new state ``[B, D]`` in at least float32 (also the output of this step).
    """
    op = "linear_recurrence_step"
    a = c.as_float(a, "a", op)
    b = c.as_float(b, "b", op)
    c.check_shape(a, (None, None), "a", op, "[B, D]")
    c.check_shape(b, a.shape, "b", op, f"[B, D] like a {a.shape}")
    dt = c.calc_dtype(a, b, h)
    if h is None:
        h = jnp.zeros(a.shape, dt)
    else:
        h = c.as_float(h, "h", op)
        c.check_shape(h, a.shape, "h", op, "[B, D]")
    return a.astype(dt) * h.astype(dt) + b.astype(dt)
