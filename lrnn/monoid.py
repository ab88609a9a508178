"""Affine maps as a monoid, and scans over sequences of them.

Every recurrence in lrnn is ``S_t = A_t S_{t-1} + b_t``. The element is ``Affine(A, b)``;
composition "later after earlier" is ``(A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2)`` with
identity ``(I, 0)``. A monoid fixes the storage format of ``A``:

=====================  ===========================  ============================
monoid                 A                            b (vector or matrix state)
=====================  ===========================  ============================
``DIAGONAL``           ``[..., n]``                 ``[..., n]`` or ``[..., n, m]``
``BlockDiagonal(bs)``  ``[..., n/bs, bs, bs]``      ``[..., n]`` or ``[..., n, m]``
``DENSE``              ``[..., n, n]``              ``[..., n]`` or ``[..., n, m]``
=====================  ===========================  ============================

The leading ``...`` are batch axes shared by ``A`` and ``b`` (one of them is time in a scan);
whether ``b`` is a vector or a matrix state follows from its rank relative to ``A``.

All arithmetic runs in at least float32 (bfloat16/float16 inputs are upcast and the result is
cast back to the dtype of ``b``); matrix products use ``Precision.HIGHEST`` so that GPUs do not
silently drop to TF32.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lrnn import _compat

# how sequence-parallel shards exchange their summaries (lrnn.parallel.shard_prefix); here, so
# that the scans check it without importing lrnn.parallel
EXCHANGES = ("all_gather", "ppermute")


def _check_exchange(exchange, fn: str) -> None:
    if exchange not in EXCHANGES:
        raise ValueError(f"{fn}: exchange must be one of {EXCHANGES}, got {exchange!r}")

__all__ = [
    "Affine",
    "Monoid",
    "Diagonal",
    "BlockDiagonal",
    "Dense",
    "DIAGONAL",
    "DENSE",
    "scan",
    "scan_sequential",
    "compose",
    "compute_dtype",
]

_HI = lax.Precision.HIGHEST


class Affine(NamedTuple):
    """One affine map ``S -> A S + b`` (or a batch / sequence of them).

    Attributes:
      A: the transition, in the storage format of its monoid.
      b: the input, a vector state ``[..., n]`` or a matrix state ``[..., n, m]``.
    """

    A: jax.Array
    b: jax.Array


def compute_dtype(*dtypes) -> jnp.dtype:
    """The dtype arithmetic runs in: the inputs' common float dtype, at least float32."""
    dt = jnp.result_type(*dtypes)
    if not jnp.issubdtype(dt, jnp.floating):
        dt = jnp.float32
    return jnp.promote_types(dt, jnp.float32)


class Monoid:
    """A storage format for ``A`` with its composition law.

    Subclasses define ``a_rank`` (trailing axes of ``A`` that describe one map), ``state_size``,
    ``matmul`` (``A2 A1``), ``matvec`` (``A h`` for a vector or matrix state), ``eye`` and
    ``to_dense``.
    """

    name: str = "monoid"
    a_rank: int = 0

    # --- per-format primitives -------------------------------------------------------------
    def state_size(self, A: jax.Array) -> int:
        raise NotImplementedError

    def matmul(self, A2: jax.Array, A1: jax.Array) -> jax.Array:
        raise NotImplementedError

    def matvec(self, A: jax.Array, h: jax.Array, *, matrix_state: bool) -> jax.Array:
        raise NotImplementedError

    def eye(self, like: jax.Array) -> jax.Array:
        raise NotImplementedError

    def to_dense(self, A: jax.Array) -> jax.Array:
        """The ``[..., n, n]`` matrix that ``A`` stores."""
        raise NotImplementedError

    def check_A(self, A: jax.Array, name: str = "A") -> None:
        if A.ndim < self.a_rank:
            raise ValueError(
                f"{self.name}: {name} must have at least {self.a_rank} axes "
                f"({self.a_shape_doc}), got shape {A.shape}"
            )

    a_shape_doc = ""

    # --- the monoid ------------------------------------------------------------------------
    def is_matrix_state(self, elem: Affine) -> bool:
        """Whether ``elem.b`` is a matrix state ``[..., n, m]`` (else a vector ``[..., n]``)."""
        return elem.b.ndim == elem.A.ndim - self.a_rank + 2

    def batch_shape(self, elem: Affine) -> tuple[int, ...]:
        return tuple(elem.A.shape[: elem.A.ndim - self.a_rank])

    def validate(self, elem: Affine, name: str = "elems") -> bool:
        """Checks that ``elem`` is a well-formed element; returns whether b is a matrix state.

        Raises:
          TypeError / ValueError naming the argument and the expected shapes.
        """
        if not isinstance(elem, Affine):
            raise TypeError(f"{name} must be an lrnn.Affine(A, b), got {type(elem).__name__}")
        for nm, x in (("A", elem.A), ("b", elem.b)):
            if x is None:
                raise TypeError(f"{name}.{nm} must be an array, got None")
        A, b = jnp.asarray(elem.A), jnp.asarray(elem.b)
        for nm, x in (("A", A), ("b", b)):
            if not jnp.issubdtype(x.dtype, jnp.floating):
                raise TypeError(f"{name}.{nm} must be a floating-point array, got {x.dtype}")
        self.check_A(A, f"{name}.A")
        n = self.state_size(A)
        batch = A.shape[: A.ndim - self.a_rank]
        nb = len(batch)
        if b.ndim == nb + 1:
            ok, matrix = b.shape == (*batch, n), False
        elif b.ndim == nb + 2:
            ok, matrix = b.shape[:-1] == (*batch, n), True
        else:
            ok, matrix = False, False
        if not ok:
            raise ValueError(
                f"{self.name}: {name}.b must have shape {(*batch, n)} (vector state) or "
                f"{(*batch, n, 'm')} (matrix state) to match {name}.A of shape {A.shape}; "
                f"got {b.shape}"
            )
        return matrix

    def combine(self, earlier: Affine, later: Affine) -> Affine:
        """``later o earlier = (A_l A_e, A_l b_e + b_l)``."""
        matrix = self.is_matrix_state(earlier)
        A = self.matmul(later.A, earlier.A)
        b = self.matvec(later.A, earlier.b, matrix_state=matrix) + later.b
        return Affine(A, b)

    def identity(self, like: Affine) -> Affine:
        """``(I, 0)`` with the shapes and dtypes of ``like``."""
        return Affine(self.eye(like.A), jnp.zeros_like(like.b))

    def apply(self, elem: Affine, h: jax.Array) -> jax.Array:
        """``A h + b``; ``h`` has the shape of ``elem.b``."""
        return self.matvec(elem.A, h, matrix_state=self.is_matrix_state(elem)) + elem.b

    def __repr__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True, repr=False)
class Diagonal(Monoid):
    """``A = diag(a)`` stored as ``a: [..., n]``. Closed under products."""

    name = "DIAGONAL"
    a_rank = 1
    a_shape_doc = "[..., n]"

    def state_size(self, A):
        return A.shape[-1]

    def matmul(self, A2, A1):
        return A2 * A1

    def matvec(self, A, h, *, matrix_state):
        return (A[..., None] if matrix_state else A) * h

    def eye(self, like):
        return jnp.ones_like(like)

    def to_dense(self, A):
        n = A.shape[-1]
        return A[..., :, None] * jnp.eye(n, dtype=A.dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class BlockDiagonal(Monoid):
    """Block-diagonal ``A`` stored as ``[..., n/bs, bs, bs]``. Closed under products.

    Args:
      block_size: bs, the side of each block; it must divide the state size n.
    """

    block_size: int

    a_rank = 3

    def __post_init__(self):
        bs = self.block_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ValueError(f"BlockDiagonal: block_size must be a positive int, got {bs!r}")

    @property
    def name(self):  # type: ignore[override]
        return f"BlockDiagonal({self.block_size})"

    @property
    def a_shape_doc(self):  # type: ignore[override]
        bs = self.block_size
        return f"[..., n/{bs}, {bs}, {bs}]"

    def check_size(self, n: int, name: str = "n") -> None:
        """Raises unless the block size divides the state size ``n``."""
        if n % self.block_size:
            raise ValueError(
                f"{self.name}: block_size {self.block_size} does not divide the state size "
                f"{name} = {n}"
            )

    def from_dense(self, A: jax.Array) -> jax.Array:
        """The diagonal blocks ``[..., n/bs, bs, bs]`` of a dense ``[..., n, n]`` matrix."""
        A = jnp.asarray(A)
        if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
            raise ValueError(f"{self.name}.from_dense: A must be [..., n, n], got {A.shape}")
        n, bs = A.shape[-1], self.block_size
        self.check_size(n, "A.shape[-1]")
        nb = n // bs
        blocks = A.reshape(*A.shape[:-2], nb, bs, nb, bs)
        idx = jnp.arange(nb)
        return jnp.moveaxis(blocks[..., idx, :, idx, :], 0, -3)

    def check_A(self, A, name="A"):
        super().check_A(A, name)
        bs = self.block_size
        if A.shape[-2:] != (bs, bs):
            raise ValueError(
                f"{self.name}: {name} must have shape [..., n/{bs}, {bs}, {bs}], got {A.shape}"
            )

    def state_size(self, A):
        return A.shape[-3] * A.shape[-1]

    def matmul(self, A2, A1):
        return jnp.einsum("...ij,...jk->...ik", A2, A1, precision=_HI)

    def matvec(self, A, h, *, matrix_state):
        nb, bs = A.shape[-3], A.shape[-1]
        if matrix_state:
            hb = h.reshape(*h.shape[:-2], nb, bs, h.shape[-1])
            out = jnp.einsum("...ij,...jm->...im", A, hb, precision=_HI)
            return out.reshape(*out.shape[:-3], nb * bs, h.shape[-1])
        hb = h.reshape(*h.shape[:-1], nb, bs)
        out = jnp.einsum("...ij,...j->...i", A, hb, precision=_HI)
        return out.reshape(*out.shape[:-2], nb * bs)

    def eye(self, like):
        return jnp.broadcast_to(jnp.eye(self.block_size, dtype=like.dtype), like.shape)

    def to_dense(self, A):
        nb, bs = A.shape[-3], A.shape[-1]
        eye_nb = jnp.eye(nb, dtype=A.dtype)
        # [..., I, i, J, j] = A[..., I, i, j] * delta(I, J)
        full = jnp.einsum("...Iij,IJ->...IiJj", A, eye_nb)
        return full.reshape(*A.shape[:-3], nb * bs, nb * bs)


@dataclasses.dataclass(frozen=True, repr=False)
class Dense(Monoid):
    """A full ``[..., n, n]`` matrix. Every structure embeds here."""

    name = "DENSE"
    a_rank = 2
    a_shape_doc = "[..., n, n]"

    def check_A(self, A, name="A"):
        super().check_A(A, name)
        if A.shape[-1] != A.shape[-2]:
            raise ValueError(f"DENSE: {name} must be square [..., n, n], got {A.shape}")

    def state_size(self, A):
        return A.shape[-1]

    def matmul(self, A2, A1):
        return jnp.einsum("...ij,...jk->...ik", A2, A1, precision=_HI)

    def matvec(self, A, h, *, matrix_state):
        if matrix_state:
            return jnp.einsum("...ij,...jm->...im", A, h, precision=_HI)
        return jnp.einsum("...ij,...j->...i", A, h, precision=_HI)

    def eye(self, like):
        return jnp.broadcast_to(jnp.eye(like.shape[-1], dtype=like.dtype), like.shape)

    def to_dense(self, A):
        return A


DIAGONAL = Diagonal()
DENSE = Dense()


# ------------------------------------------------------------------------------------------
# Scans
# ------------------------------------------------------------------------------------------
def _prepare(monoid: Monoid, elems: Affine, h0, axis: int, fn: str):
    """Validates, normalises the time axis, upcasts. Returns (elems, h0, axis, matrix, dtype)."""
    if not isinstance(monoid, Monoid):
        raise TypeError(f"{fn}: monoid must be an lrnn monoid (DIAGONAL, ...), got {monoid!r}")
    matrix = monoid.validate(elems, "elems")
    A, b = jnp.asarray(elems.A), jnp.asarray(elems.b)
    nbatch = A.ndim - monoid.a_rank
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{fn}: axis must be an int, got {axis!r}")
    if not -nbatch <= axis < nbatch:
        raise ValueError(
            f"{fn}: axis {axis} is out of range: elems have {nbatch} batch axes "
            f"(A {A.shape}, b {b.shape}); the time axis must be one of them, "
            f"in [{-nbatch}, {nbatch})"
        )
    axis %= nbatch
    dtype = compute_dtype(A.dtype, b.dtype)
    if h0 is not None:
        h0 = jnp.asarray(h0)
        want = b.shape[:axis] + b.shape[axis + 1 :]
        if h0.shape != want:
            raise ValueError(
                f"{fn}: h0 must have the shape of elems.b without its time axis {axis}, "
                f"{want}; got {h0.shape}"
            )
        if not jnp.issubdtype(h0.dtype, jnp.floating):
            raise TypeError(f"{fn}: h0 must be a floating-point array, got {h0.dtype}")
        dtype = compute_dtype(dtype, h0.dtype)
        h0 = h0.astype(dtype)
    return Affine(A.astype(dtype), b.astype(dtype)), h0, axis, matrix, b.dtype


def _check_reverse(reverse, fn: str) -> bool:
    if not isinstance(reverse, bool | np.bool_):
        raise TypeError(f"{fn}: reverse must be a bool, got {reverse!r}")
    return bool(reverse)


def _fold_h0(monoid: Monoid, elems: Affine, h0, axis: int, reverse: bool) -> Affine:
    """Folds the initial state into the first element: ``b_0 <- A_0 h0 + b_0``."""
    if h0 is None:
        return elems
    idx = -1 if reverse else 0
    first = Affine(jnp.take(elems.A, idx, axis=axis), jnp.take(elems.b, idx, axis=axis))
    b_first = monoid.apply(first, h0)
    b = elems.b.at[(slice(None),) * axis + (idx,)].set(b_first)
    return Affine(elems.A, b)


def compose(monoid: Monoid, elems: Affine, *, axis: int = 0, reverse: bool = False) -> Affine:
    """Prefix compositions of a sequence of affine maps, by ``jax.lax.associative_scan``.

    Args:
      monoid: the storage format of ``elems.A``.
      elems: ``Affine(A, b)`` with a time axis ``axis`` among the batch axes.
      axis: the time axis, counted over the batch axes of ``elems`` (negative counts from the
        last batch axis).
      reverse: compose from the end instead.

    Returns:
      ``Affine`` with ``A[t] = A_t ... A_0`` and ``b[t] = h_t`` from a zero initial state
      (``reverse=True``: ``A[t] = A_t ... A_{T-1}``). Computed in at least float32.
    """
    elems, _, axis, _, _ = _prepare(monoid, elems, None, axis, "compose")
    return _associative(monoid, elems, axis, reverse)


def _associative(monoid: Monoid, elems: Affine, axis: int, reverse: bool) -> Affine:
    # jax.lax.associative_scan calls fn(a, b) with a the element processed first (earlier in
    # time when reverse=False, later in time when reverse=True): exactly combine(earlier, later).
    return _compat.associative_scan(monoid.combine, elems, reverse=reverse, axis=axis)


def scan(
    monoid: Monoid,
    elems: Affine,
    h0: jax.Array | None = None,
    *,
    axis: int = 0,
    reverse: bool = False,
    axis_name: str | None = None,
    exchange: str = "all_gather",
) -> jax.Array:
    """Every state of ``h_t = A_t h_{t-1} + b_t``, by ``jax.lax.associative_scan``.

    Work is O(T log T) monoid products in depth O(log T).

    Args:
      monoid: ``DIAGONAL``, ``BlockDiagonal(bs)`` or ``DENSE``: the storage format of A.
      elems: ``Affine(A, b)``; b is a vector ``[..., n]`` or a matrix state ``[..., n, m]``.
      h0: the state before the first step, shaped like ``elems.b`` without the time axis;
        zeros if None. With ``reverse=True`` it enters at the end.
      axis: the time axis, counted over the batch axes (negative counts from the last batch
        axis).
      reverse: run from the end, ``h_t = A_t h_{t+1} + b_t``.
      axis_name: inside ``jax.shard_map`` with the time axis split over this mesh axis:
        ``elems`` is this shard's block of time steps, ``h0`` the global initial state
        (replicated), and the result is this shard's block of the unsharded result. See
        :mod:`lrnn.parallel`.
      exchange: with ``axis_name``, how shard summaries are exchanged: ``"all_gather"`` or
        ``"ppermute"`` (:func:`lrnn.parallel.shard_prefix`).

    Returns:
      h with the shape and dtype of ``elems.b`` (arithmetic in at least float32).
    """
    reverse = _check_reverse(reverse, "scan")
    _check_exchange(exchange, "scan")  # without axis_name too (a typo on one device)
    if axis_name is not None:
        from lrnn import parallel  # lazy: lrnn.parallel imports this module

        return parallel.scan(
            monoid,
            elems,
            h0,
            axis=axis,
            reverse=reverse,
            axis_name=axis_name,
            exchange=exchange,
        )
    elems, h0, axis, _, out_dtype = _prepare(monoid, elems, h0, axis, "scan")
    if elems.b.shape[axis] == 0:  # no steps: no states (as scan_sequential)
        return elems.b.astype(out_dtype)
    elems = _fold_h0(monoid, elems, h0, axis, reverse)
    return _associative(monoid, elems, axis, reverse).b.astype(out_dtype)


def scan_sequential(
    monoid: Monoid,
    elems: Affine,
    h0: jax.Array | None = None,
    *,
    axis: int = 0,
    reverse: bool = False,
    axis_name: str | None = None,
    exchange: str = "all_gather",
) -> jax.Array:
    """The reference: same signature and result as :func:`scan`, one step at a time.

    A ``lax.scan`` over the time axis applying ``h <- A_t h + b_t``: O(T) work and depth.
    With ``axis_name`` (inside ``jax.shard_map``) the time axis is split over that mesh axis,
    as in :func:`scan`.
    """
    reverse = _check_reverse(reverse, "scan_sequential")
    _check_exchange(exchange, "scan_sequential")  # without axis_name too
    if axis_name is not None:
        from lrnn import parallel  # lazy: lrnn.parallel imports this module

        return parallel.scan_sequential(
            monoid,
            elems,
            h0,
            axis=axis,
            reverse=reverse,
            axis_name=axis_name,
            exchange=exchange,
        )
    elems, h0, axis, _, out_dtype = _prepare(monoid, elems, h0, axis, "scan_sequential")
    A = jnp.moveaxis(elems.A, axis, 0)
    b = jnp.moveaxis(elems.b, axis, 0)
    if h0 is None:
        h0 = jnp.zeros(b.shape[1:], b.dtype)

    def step(h, ab):
        h = monoid.apply(Affine(*ab), h)
        return h, h

    _, hs = lax.scan(step, h0, (A, b), reverse=reverse)
    return jnp.moveaxis(hs, 0, axis).astype(out_dtype)
