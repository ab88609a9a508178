"""Structured vector-state recurrences ``h_t = A_t h_{t-1} + b_t`` (the SLiCE structures).

Two ways to give the transitions:

- features: ``structured_recurrence(x, weights, b, structure=...)`` with
  ``A_t = lrnn.transitions.slice_transition(x_t, weights, structure)``
  (``I + sum_i x_t^i A^i``; structure in ``lrnn.transitions.STRUCTURES``);
- elements: ``structured_recurrence(Affine(A, b), monoid=...)`` with precomputed
  transitions in the storage format of ``monoid`` (``b`` is taken from the element).

Implementations: "sequential" (``lax.scan`` over tokens; with features it applies
``slice_apply``, the cheap structured product that never forms a dense matrix: O(n log n)
per token for Walsh-Hadamard, O(n r) for DPLR), "scan" (``lrnn.scan`` over the elements in
their monoid), "chunked" (``lax.associative_scan`` inside chunks, in parallel over chunks,
then a loop or scan over the chunk summaries) and "auto" (= "chunked": there is no Pallas
kernel for these).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lrnn import _compat, transitions
from lrnn.monoid import Affine, Monoid
from lrnn.monoid import scan as monoid_scan
from lrnn.ops import _common as c

__all__ = ["structured_recurrence", "structured_recurrence_step", "structured_summary"]

_OP = "structured_recurrence"


def _is_elements(x) -> bool:
    return isinstance(x, Affine)


def _validate(x, weights, b, structure, monoid, h0, op=_OP):
    """Returns ``(mode, x_or_A, weights, b, monoid, h0)``; mode is "features" or "elements"."""
    if _is_elements(x):
        if monoid is None or not isinstance(monoid, Monoid):
            raise TypeError(
                f"{op}: with Affine elements pass monoid= (DIAGONAL, BlockDiagonal(bs), "
                f"DENSE), got {monoid!r}"
            )
        if weights is not None or b is not None or structure is not None:
            raise ValueError(f"{op}: with Affine elements, weights, b and structure must be None")
        A = c.as_float(x.A, "elements.A", op)
        b = c.as_float(x.b, "elements.b", op)
        if monoid.validate(Affine(A, b), "elements"):
            raise ValueError(f"{op}: elements.b must be a vector state [B, T, n], got {b.shape}")
        if b.ndim != 3:
            raise ValueError(f"{op}: elements.b must have shape [B, T, n], got {b.shape}")
        mode = "elements"
    else:
        if monoid is not None:  # the structure gives the monoid (slice_monoid)
            raise ValueError(
                f"{op}: with features x (and weights, b, structure) monoid must be None, the "
                f"structure gives it; got {monoid!r} (pass an lrnn.Affine of elements to scan "
                "them in a monoid of your choice)"
            )
        if structure not in transitions.STRUCTURES:
            raise ValueError(
                f"{op}: structure must be one of {transitions.STRUCTURES}, got {structure!r}"
            )
        A = c.as_float(x, "x", op)
        c.check_shape(A, (None, None, None), "x", op, "[B, T, d_in]")
        b = c.as_float(b, "b", op)
        c.check_shape(b, (A.shape[0], A.shape[1], None), "b", op, "[B, T, n]")
        monoid = transitions.slice_monoid(structure, weights)
        # checks weights against x (abstractly: nothing is computed) and finds n
        a_shape = jax.eval_shape(
            lambda x1: transitions.slice_transition(x1, weights, structure),
            jax.ShapeDtypeStruct(A.shape[:1] + A.shape[2:], A.dtype),
        )
        n = monoid.state_size(a_shape)
        if n != b.shape[-1]:
            raise ValueError(f"{op}: b must have shape [B, T, n] with n = {n}, got {b.shape}")
        mode = "features"
    if h0 is not None:
        h0 = c.as_float(h0, "h0", op)
        c.check_shape(h0, (b.shape[0], b.shape[2]), "h0", op, "[B, n]")
    return mode, A, weights, b, monoid, h0


def _elements(mode, A, weights, b, structure):
    if mode == "elements":
        return Affine(A, b)
    return Affine(transitions.slice_transition(A, weights, structure), b)


def _sequential(mode, A, weights, b, structure, monoid, h0):
    def step(h, xb):
        x_t, b_t = xb
        if mode == "elements":
            h = monoid.apply(Affine(x_t, b_t), h)
        else:
            h = transitions.slice_apply(x_t, weights, structure, h) + b_t
        return h, h

    _, h = lax.scan(step, h0, (jnp.moveaxis(A, 1, 0), jnp.moveaxis(b, 1, 0)))
    return jnp.moveaxis(h, 0, 1)


def _chunk_local(monoid, elems, C):
    """Prefix compositions inside each chunk, from zero: ``Affine([B, N, C, ...])``."""
    B, T = elems.b.shape[:2]
    eye = monoid.eye(elems.A[:, :1])
    N = c.n_chunks(T, C)
    A = jnp.concatenate([elems.A, jnp.broadcast_to(eye, (B, N * C - T) + eye.shape[2:])], 1)
    b = c.pad_time(elems.b, N * C)
    A = A.reshape(B, N, C, *A.shape[2:])
    b = b.reshape(B, N, C, *b.shape[2:])
    return _compat.associative_scan(monoid.combine, Affine(A, b), axis=2)


def _chunked(monoid, elems, h0, C, chunk_combine):
    T = elems.b.shape[1]
    P = _chunk_local(monoid, elems, C)
    summaries = Affine(P.A[:, :, -1], P.b[:, :, -1])
    h_in, _ = c.combine_chunks(monoid, summaries, h0, axis=1, chunk_combine=chunk_combine)
    h = P.b + monoid.matvec(P.A, h_in[:, :, None], matrix_state=False)
    B, N = h.shape[:2]
    return h.reshape(B, N * C, -1)[:, :T]


def structured_summary(x, weights=None, b=None, *, structure=None, monoid=None,
                       chunk_size: int = 64) -> Affine:
    """The whole sequence as one element of its monoid: ``(A_T ... A_1, h_T from 0)``.

    Args: as :func:`structured_recurrence`.

    Returns:
      ``Affine(A [B, ...], b [B, n])`` in the monoid's format, at least float32.
    """
    op = "structured_summary"
    mode, A, weights, b, monoid, _ = _validate(x, weights, b, structure, monoid, None, op)
    C = min(c.check_positive_int(chunk_size, "chunk_size", op), b.shape[1])
    dt = c.calc_dtype(A, b)
    elems = _elements(mode, A.astype(dt), weights, b.astype(dt), structure)
    elems = Affine(elems.A.astype(dt), elems.b)
    P = _chunk_local(monoid, elems, C)
    return c.fold_chunks(monoid, Affine(P.A[:, :, -1], P.b[:, :, -1]), axis=1)


def structured_recurrence(
    x,
    weights=None,
    b=None,
    *,
    structure: str | None = None,
    monoid: Monoid | None = None,
    h0=None,
    chunk_size: int = 64,
    implementation: str = "auto",
    chunk_combine: str = "loop",
    axis_name=None,
    exchange: str = "all_gather",
) -> jax.Array:
    """All states of ``h_t = A_t h_{t-1} + b_t`` with structured ``A_t``.

    Args:
      x: token features ``[B, T, d_in]`` (with ``weights`` and ``structure``), or an
        ``lrnn.Affine`` of precomputed elements ``A [B, T, ...]`` (in ``monoid``'s format),
        ``b [B, T, n]``.
      weights: the SLiCE matrices ``A^i`` for ``structure`` (see
        ``lrnn.transitions.slice_transition``); None with elements.
      b: ``[B, T, n]`` the inputs; None with elements.
      structure: one of ``lrnn.transitions.STRUCTURES``; None with elements.
      monoid: the monoid of precomputed elements; None with features.
      h0: ``[B, n]`` the initial state; zeros if None.
      chunk_size: tokens per chunk of the chunked form.
      implementation: "sequential" | "scan" | "chunked" | "auto".
      chunk_combine: chunked form across chunks: "loop" or "scan".
      axis_name: set inside ``jax.shard_map`` with the time axis sharded over this mesh axis.
      exchange: how shard summaries are exchanged (see ``lrnn.parallel``).

    Returns:
      h ``[B, T, n]`` in the inputs' dtype (arithmetic in at least float32).
    """
    mode, A, weights, b, monoid, h0 = _validate(x, weights, b, structure, monoid, h0)
    impl = c.resolve_implementation(implementation, _OP, None)
    chunk_size = c.check_positive_int(chunk_size, "chunk_size", _OP)
    c.check_choice(chunk_combine, c.CHUNK_COMBINES, "chunk_combine", _OP)
    c.check_sequence_axis(axis_name, exchange, _OP)
    if c.empty(A, b) and axis_name is None:
        impl = "sequential"
    out_dt = c.out_dtype(A, b)
    dt = c.calc_dtype(A, b, h0)
    B, T, n = b.shape
    if axis_name is not None:
        summary = structured_summary(x, weights, b, structure=structure,
                                     monoid=None if mode == "features" else monoid,
                                     chunk_size=chunk_size)
        z = jnp.zeros((B, n), dt) if h0 is None else h0
        h0, _ = c.shard_prefix(monoid, summary, z.astype(dt), axis_name=axis_name,
                               exchange=exchange)
    h0 = jnp.zeros((B, n), dt) if h0 is None else h0.astype(dt)
    A, b = A.astype(dt), b.astype(dt)
    if impl == "sequential":
        h = _sequential(mode, A, weights, b, structure, monoid, h0)
    else:
        elems = _elements(mode, A, weights, b, structure)
        elems = Affine(elems.A.astype(dt), elems.b)
        if impl == "scan":
            h = monoid_scan(monoid, elems, h0, axis=1)
        else:
            h = _chunked(monoid, elems, h0, min(chunk_size, T), chunk_combine)
    return h.astype(out_dt)


def structured_recurrence_step(x, weights=None, b=None, h=None, *, structure=None,
                               monoid=None) -> jax.Array:
    """One step ``h <- A_t h + b_t`` (decoding); repeated use equals the whole sequence.

    Args:
      x: features ``[B, d_in]`` (with ``weights``, ``b [B, n]``, ``structure``), or an
        ``lrnn.Affine`` element ``A [B, ...]``, ``b [B, n]`` (with ``monoid``).
      weights, b, structure, monoid: as in :func:`structured_recurrence`.
      h: ``[B, n]`` the previous state; zeros if None.

    Returns:
      the new state ``[B, n]`` in at least float32.
    """
    op = "structured_recurrence_step"
    if _is_elements(x):
        x = Affine(jnp.expand_dims(jnp.asarray(x.A), 1), jnp.expand_dims(jnp.asarray(x.b), 1))
    else:
        x = jnp.expand_dims(c.as_float(x, "x", op), 1)
        b = jnp.expand_dims(c.as_float(b, "b", op), 1)
    mode, A, weights, b, monoid, h = _validate(x, weights, b, structure, monoid, h, op)
    dt = c.calc_dtype(A, b, h)
    h = jnp.zeros((b.shape[0], b.shape[2]), dt) if h is None else h.astype(dt)
    A, b = A[:, 0].astype(dt), b[:, 0].astype(dt)
    if mode == "elements":
        return monoid.apply(Affine(A, b), h)
    return transitions.slice_apply(A, weights, structure, h) + b
