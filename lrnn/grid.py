"""Linear recurrences on 2D grids: pLSTM (Pöppel et al., 2025) as a monoid over columns.

Grid axis x is the "r" (right-going) direction, y the "d" (down-going) direction. Every cell
``(x, y)`` holds two matrix states ``Cr, Cd: [dk, dv]``; with ``kv = k v^T`` of the cell,

    Cr[x, y] = t_rr Cr[x-1, y] + t_rd Cd[x, y-1] + s_r kv
    Cd[x, y] = t_dd Cd[x, y-1] + t_dr Cr[x-1, y] + s_d kv
    o[x, y]  = (m_r Cr[x-1, y] + m_d Cd[x, y-1])^T q + d (q . k) v

with zero states off the grid. The gates ``s`` (source), ``t`` (transition), ``m`` (mark) and
``d`` (direct) are scalars per cell and head.

**The column monoid.** Read the grid column by column. Inside column x, ``Cd`` is a 1D linear
recurrence along y with gate ``t_dd``, driven by ``t_dr Cr[x-1, .] + s_d kv``; so with the
strictly lower-triangular transfer matrix

    L[y, j] = t_dd[j+1] ... t_dd[y-1]   (j < y; empty product = 1),   L[y, j] = 0 (j >= y)

the incoming states are ``Cd[x, y-1] = (L (t_dr Cr[x-1, .] + s_d kv))[y]`` and

    Cr[x, .] = M_x Cr[x-1, .] + b_x,
    M_x = diag(t_rr) + diag(t_rd) L diag(t_dr)          (Y x Y, lower triangular)
    b_x = s_r kv + t_rd (L (s_d kv)).

``Affine(M_x, b_x)`` is a ``DENSE`` element over the column (state ``[Y, dk*dv]``); composing
the X columns is :func:`lrnn.scan` along x. ``L`` comes from a cumulative product of ``t_dd``
along y (``lax.cumprod``: an associative scan, exact when gates are zero or negative; no logs).
Once the incoming ``Cr[x-1, .]`` are known, the scan along y that gives ``Cd[x, y-1]`` is the
same ``L`` applied to the column, and the outputs follow cell by cell.

Orientations: the layer runs the recurrence in four orientations, which are flips of the grid
(``orientation`` bit 0 flips x, bit 1 flips y): inputs are flipped, the recurrence runs, the
output is flipped back.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lrnn.monoid import DENSE, Affine, compute_dtype, scan

__all__ = [
    "PLSTMGates",
    "plstm2d",
    "p_mode_gates",
    "d_mode_gates",
    "flip_grid",
    "ORIENTATIONS",
    "IMPLEMENTATIONS",
]

_HI = lax.Precision.HIGHEST

IMPLEMENTATIONS = ("sequential", "scan", "auto")
# orientation index -> (flip x, flip y); 0 is the natural one (state flows to +x and +y).
ORIENTATIONS = ((False, False), (True, False), (False, True), (True, True))


class PLSTMGates(NamedTuple):
    """The per-cell scalar gates of a 2D pLSTM; each field is ``[B, X, Y, H]``.

    Attributes:
      s_r: source into the right-going state ``Cr``.
      s_d: source into the down-going state ``Cd``.
      t_rr: transition ``Cr[x-1, y] -> Cr[x, y]``.
      t_rd: transition ``Cd[x, y-1] -> Cr[x, y]``.
      t_dr: transition ``Cr[x-1, y] -> Cd[x, y]``.
      t_dd: transition ``Cd[x, y-1] -> Cd[x, y]``.
      m_r: mark (read-out weight) of the incoming ``Cr[x-1, y]``.
      m_d: mark of the incoming ``Cd[x, y-1]``.
      d: direct term, the weight of ``(q . k) v`` of the cell itself.
    """

    s_r: jax.Array
    s_d: jax.Array
    t_rr: jax.Array
    t_rd: jax.Array
    t_dr: jax.Array
    t_dd: jax.Array
    m_r: jax.Array
    m_d: jax.Array
    d: jax.Array


# ------------------------------------------------------------------------------------------
# Gate constructors
# ------------------------------------------------------------------------------------------
def p_mode_gates(
    source_r, source_d, angle, decay, mark_r, mark_d, direct, *, signed: bool = False
) -> PLSTMGates:
    """P-mode (directed propagation) gates from pre-activations, each ``[B, X, Y, H]``.

    ``t_rr = t_rd = gamma alpha`` and ``t_dr = t_dd = gamma (1 - alpha)`` with the angle
    ``alpha = sigmoid(angle)`` in [0, 1] and the decay ``gamma = sigmoid(decay)`` in [0, 1]
    (``signed=True``: ``gamma = tanh(decay)`` in [-1, 1]). Each column of the 2 x 2
    transition sums to gamma, so the mass a source injects is split between the two outgoing
    directions and never grows. Source, mark and direct gates are sigmoids.

    Returns:
      PLSTMGates, each ``[B, X, Y, H]``.
    """
    if not isinstance(signed, bool | np.bool_):  # a string such as "no" would count as True
        raise TypeError(f"p_mode_gates: signed must be a bool, got {signed!r}")
    alpha = jax.nn.sigmoid(angle)
    gamma = jnp.tanh(decay) if signed else jax.nn.sigmoid(decay)
    t_r = gamma * alpha
    t_d = gamma * (1.0 - alpha)
    sg = jax.nn.sigmoid
    return PLSTMGates(
        sg(source_r), sg(source_d), t_r, t_r, t_d, t_d, sg(mark_r), sg(mark_d), sg(direct)
    )


def d_mode_gates(
    source_r,
    source_d,
    trans_r,
    trans_d,
    trans_cross,
    mark_r,
    mark_d,
    direct,
    *,
    chirality: str = "rd",
) -> PLSTMGates:
    """D-mode (diffusive) gates from pre-activations, each ``[B, X, Y, H]``.

    Transitions are ``tanh`` (each in [-1, 1]); one cross transition is zero, so a path
    changes direction at most once and the number of paths between two cells stays linear
    in their distance. ``chirality="rd"`` keeps ``t_rd = tanh(trans_cross)`` (d feeds r) and
    sets ``t_dr = 0``; ``"dr"`` keeps ``t_dr`` and sets ``t_rd = 0``. Source, mark and direct
    gates are sigmoids.

    Returns:
      PLSTMGates, each ``[B, X, Y, H]``.
    """
    if chirality not in ("rd", "dr"):
        raise ValueError(f"d_mode_gates: chirality must be 'rd' or 'dr', got {chirality!r}")
    cross = jnp.tanh(trans_cross)
    zero = jnp.zeros_like(cross)
    t_rd, t_dr = (cross, zero) if chirality == "rd" else (zero, cross)
    sg = jax.nn.sigmoid
    return PLSTMGates(
        sg(source_r),
        sg(source_d),
        jnp.tanh(trans_r),
        t_rd,
        t_dr,
        jnp.tanh(trans_d),
        sg(mark_r),
        sg(mark_d),
        sg(direct),
    )


def flip_grid(x, orientation: int):
    """Flips every array of a pytree along the grid axes 1 (x) and/or 2 (y).

    Args:
      x: a pytree of arrays ``[B, X, Y, ...]``.
      orientation: 0..3; bit 0 flips x, bit 1 flips y. Flipping is its own inverse.
    """
    fx, fy = ORIENTATIONS[_check_orientation(orientation)]
    if not (fx or fy):
        return x
    # basic indexing keeps NumPy arrays NumPy (and float64) and JAX arrays JAX
    index = (slice(None), slice(None, None, -1 if fx else 1), slice(None, None, -1 if fy else 1))
    return jax.tree.map(lambda a: a[index], x)


def _check_orientation(orientation) -> int:
    if isinstance(orientation, bool) or not isinstance(orientation, int) or not (
        0 <= orientation < 4
    ):
        raise ValueError(
            "orientation must be an int in 0..3 (bit 0 flips x, bit 1 flips y), "
            f"got {orientation!r}"
        )
    return orientation


# ------------------------------------------------------------------------------------------
# The op
# ------------------------------------------------------------------------------------------
def _validate(q, k, v, gates):
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not hasattr(a, "ndim") or a.ndim != 5:
            shape = getattr(a, "shape", type(a).__name__)
            want = "[B, X, Y, H, dv]" if name == "v" else "[B, X, Y, H, dk]"
            raise ValueError(f"plstm2d: {name} must have shape {want}, got {shape}")
    if k.shape != q.shape:
        raise ValueError(
            f"plstm2d: k must have the shape of q [B, X, Y, H, dk] = {q.shape}, got {k.shape}"
        )
    if v.shape[:4] != q.shape[:4]:
        raise ValueError(
            f"plstm2d: v must have shape [B, X, Y, H, dv] = {(*q.shape[:4], 'dv')}, "
            f"got {v.shape}"
        )
    if not isinstance(gates, PLSTMGates):
        raise TypeError(f"plstm2d: gates must be a PLSTMGates, got {type(gates).__name__}")
    for name, g in zip(PLSTMGates._fields, gates):
        if getattr(g, "shape", None) != q.shape[:4]:
            raise ValueError(
                f"plstm2d: gates.{name} must have shape [B, X, Y, H] = {q.shape[:4]}, "
                f"got {getattr(g, 'shape', type(g).__name__)}"
            )
    for name, a in (("q", q), ("k", k), ("v", v), *zip(PLSTMGates._fields, gates)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"plstm2d: {name} must be floating point, got {a.dtype}")


def plstm2d(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    gates: PLSTMGates,
    *,
    implementation: str = "scan",
    orientation: int = 0,
) -> jax.Array:
    """2D pLSTM: the recurrence in the module docstring, every output of the grid.

    Args:
      q: queries ``[B, X, Y, H, dk]`` (not scaled here).
      k: keys ``[B, X, Y, H, dk]``.
      v: values ``[B, X, Y, H, dv]``.
      gates: :class:`PLSTMGates`, each ``[B, X, Y, H]``.
      implementation: one of
        ``"sequential"``: the reference, a ``lax.scan`` over columns of a ``lax.scan`` over
        the cells of a column (dependency order). Depth ``O(X Y)``; work
        ``O(B H X Y dk dv)``; memory ``O(B H Y dk dv)`` forward, ``O(B H X Y dk dv)`` under
        autodiff (the carry of every step is saved).
        ``"scan"``: column elements ``Affine(M_x, b_x)`` composed by :func:`lrnn.scan`
        over x. Depth ``O(log X + log Y)``; work ``O(B H X (Y^3 + Y^2 dk dv))``; memory
        ``O(B H X Y (Y + dk dv))`` (the ``Y x Y`` elements and the ``[Y, dk dv]`` states
        of every column; the same order under autodiff).
        ``"auto"``: ``"sequential"`` on CPU, where it is faster for the small grids of
        patch models (a 4-block pLSTM on 8 x 8 patches trained at 0.4 s per step against
        0.8 s for the scan), else ``"scan"``.
      orientation: 0..3; bit 0 runs the recurrence towards -x, bit 1 towards -y (the grid
        is flipped, the recurrence runs, the output is flipped back).

    Returns:
      o ``[B, X, Y, H, dv]`` in the dtype of v (arithmetic in at least float32).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"plstm2d: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
        )
    orientation = _check_orientation(orientation)
    _validate(q, k, v, gates)
    out_dtype = v.dtype
    dtype = compute_dtype(q.dtype, k.dtype, v.dtype, *(g.dtype for g in gates))
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    gates = PLSTMGates(*(g.astype(dtype) for g in gates))
    q, k, v, gates = flip_grid((q, k, v, gates), orientation)
    if implementation == "auto":
        implementation = "sequential" if jax.default_backend() == "cpu" else "scan"
    fn = _plstm_sequential if implementation == "sequential" else _plstm_scan
    o = fn(q, k, v, gates)
    return flip_grid(o, orientation).astype(out_dtype)


def _plstm_sequential(q, k, v, g: PLSTMGates):
    """Cell by cell: outer ``lax.scan`` over x carrying ``Cr`` of a column, inner over y."""
    B, X, Y, H, dk = q.shape
    dv = v.shape[-1]
    # x-major, then y: [X, Y, B, H, ...]
    xm = lambda a: jnp.moveaxis(a, (1, 2), (0, 1))
    qs, ks, vs = xm(q), xm(k), xm(v)
    gs = PLSTMGates(*(xm(a)[..., None, None] for a in g))  # [X, Y, B, H, 1, 1]

    def column(col):
        q_c, k_c, v_c, g_c, cr_in_c = col

        def cell(cd_in, c):
            q_, k_, v_, g_, cr_in = c
            kv = k_[..., :, None] * v_[..., None, :]
            read = g_.m_r * cr_in + g_.m_d * cd_in  # [B, H, dk, dv]
            o = jnp.einsum("bhkv,bhk->bhv", read, q_, precision=_HI)
            o = o + g_.d[..., 0] * jnp.sum(q_ * k_, -1, keepdims=True) * v_
            cr = g_.t_rr * cr_in + g_.t_rd * cd_in + g_.s_r * kv
            cd = g_.t_dd * cd_in + g_.t_dr * cr_in + g_.s_d * kv
            return cd, (cr, o)

        cd0 = jnp.zeros((B, H, dk, dv), q.dtype)
        _, (cr_col, o_col) = lax.scan(cell, cd0, (q_c, k_c, v_c, g_c, cr_in_c))
        return cr_col, o_col

    def col_step(cr_prev, col):
        cr_col, o_col = column((*col, cr_prev))
        return cr_col, o_col

    cr0 = jnp.zeros((Y, B, H, dk, dv), q.dtype)
    _, o = lax.scan(col_step, cr0, (qs, ks, vs, gs))  # [X, Y, B, H, dv]
    return jnp.moveaxis(o, (0, 1), (1, 2))


def _transfer_matrix(t_dd):
    """``L[..., y, j] = t_dd[j+1] ... t_dd[y-1]`` for ``j < y``, else 0.

    Args:
      t_dd: ``[..., Y]``.

    Returns:
      ``[..., Y, Y]``, strictly lower triangular.
    """
    Y = t_dd.shape[-1]
    i = jnp.arange(Y)
    below = i[:, None] > i[None, :]  # [i, j]: i > j
    # W[i, j] = t_dd[i] for i > j, 1 otherwise; Z = cumprod over i gives
    # Z[y, j] = prod_{j < i <= y} t_dd[i] on and below the diagonal.
    W = jnp.where(below, t_dd[..., :, None], jnp.ones((), t_dd.dtype))
    Z = lax.cumprod(W, axis=W.ndim - 2)
    Z = jnp.where(below | (i[:, None] == i[None, :]), Z, 0.0)
    # L[y] = Z[y-1] (the state that enters row y left row y-1), L[0] = 0.
    pad = [(0, 0)] * (Z.ndim - 2) + [(1, 0), (0, 0)]
    return jnp.pad(Z[..., :-1, :], pad)


def _plstm_scan(q, k, v, g: PLSTMGates):
    """Columns as DENSE elements over y, composed by ``lrnn.scan`` along x."""
    B, X, Y, H, dk = q.shape
    dv = v.shape[-1]
    m = dk * dv
    hm = lambda a: jnp.moveaxis(a, 3, 1)  # [B, X, Y, H, ...] -> [B, H, X, Y, ...]
    g = PLSTMGates(*(hm(a) for a in g))  # [B, H, X, Y]
    qh, kh, vh = hm(q), hm(k), hm(v)
    kv = (kh[..., :, None] * vh[..., None, :]).reshape(B, H, X, Y, m)

    L = _transfer_matrix(g.t_dd)  # [B, H, X, Y, Y]
    col = lambda mat, s: jnp.einsum("...yj,...jm->...ym", mat, s, precision=_HI)
    eye = jnp.eye(Y, dtype=q.dtype)
    M = eye * g.t_rr[..., :, None] + g.t_rd[..., :, None] * L * g.t_dr[..., None, :]
    src_d = g.s_d[..., None] * kv
    b = g.s_r[..., None] * kv + g.t_rd[..., None] * col(L, src_d)
    cr = scan(DENSE, Affine(M, b), axis=2)  # Cr[x, .] for every x: [B, H, X, Y, m]
    cr_in = jnp.pad(cr[:, :, :-1], [(0, 0), (0, 0), (1, 0), (0, 0), (0, 0)])  # Cr[x-1, .]
    cd_in = col(L, g.t_dr[..., None] * cr_in + src_d)  # Cd[x, y-1]
    read = (g.m_r[..., None] * cr_in + g.m_d[..., None] * cd_in).reshape(B, H, X, Y, dk, dv)
    o = jnp.einsum("bhxykv,bhxyk->bhxyv", read, qh, precision=_HI)
    o = o + (g.d * jnp.sum(qh * kh, -1))[..., None] * vh
    return jnp.moveaxis(o, 1, 3)
