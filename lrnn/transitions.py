"""Token parameterisations: from activations to transition matrices and ``Affine`` elements.

Conventions follow ARCHITECTURE.md: the transition acts on the left (``S <- A S + b``), a
Householder step is ``H = I - beta k k^T`` with unit-norm keys, and every structure comes back
in the storage format of the smallest monoid that holds it (diagonal stays ``[..., n]``,
block-diagonal stays ``[..., n/bs, bs, bs]``, everything else is ``DENSE`` ``[..., n, n]``).

Each structure also has a cheap apply (``walsh_hadamard_apply``, ``dplr_apply``,
``slice_apply``) that never forms the dense matrix: that is what sequential paths use.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lrnn.monoid import DENSE, DIAGONAL, Affine, BlockDiagonal, Monoid

__all__ = [
    "householder_product",
    "walsh_hadamard",
    "walsh_hadamard_apply",
    "hadamard_matrix",
    "fwht",
    "dplr",
    "dplr_apply",
    "sparse",
    "slice_transition",
    "slice_monoid",
    "slice_apply",
    "STRUCTURES",
    "unit_gate",
    "signed_gate",
    "mamba_gate",
    "householder_beta",
]

_HI = lax.Precision.HIGHEST

STRUCTURES = ("diagonal", "block_diagonal", "sparse", "walsh_hadamard", "dplr", "dense")


def _float(x, name, fn: str = ""):
    where = f"{fn}: " if fn else ""
    if x is None:
        raise TypeError(f"{where}{name} must be an array, got None")
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"{where}{name} must be an array, got {type(x).__name__}") from e
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{where}{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def _check_bool(value, name: str, fn: str) -> bool:
    """``value`` as a bool (NumPy bools accepted); TypeError otherwise (a string such as
    "no" would otherwise count as True)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")
    return bool(value)


# ------------------------------------------------------------------------------------------
# Householder products (DeltaNet, DeltaProduct)
# ------------------------------------------------------------------------------------------
def householder_product(k, beta, v=None, gate=None) -> Affine:
    """The DENSE element of one DeltaProduct token.

    ``A = H_{n_h} ... H_1 * gate`` with ``H_j = I - beta_j k_j k_j^T`` and
    ``b = sum_j H_{n_h} ... H_{j+1} beta_j k_j v_j^T``: the map ``S -> gate * S`` followed by
    ``n_h`` delta-rule steps ``S <- H_j S + beta_j k_j v_j^T``. Keys are used as given
    (normalise them for eigenvalues ``1 - beta`` in ``[-1, 1]``).

    Args:
      k: keys ``[..., n_h, n]``.
      beta: step sizes ``[..., n_h]`` (``[0, 2]`` for eigenvalues in ``[-1, 1]``).
      v: values ``[..., n_h, m]``, or None for a zero vector input ``b: [..., n]``.
      gate: a scalar forget gate per token ``[...]``, or None for 1.

    Returns:
      ``Affine(A [..., n, n], b [..., n, m] or [..., n])``.
    """
    k = _float(k, "k", "householder_product")
    beta = _float(beta, "beta", "householder_product")
    if k.ndim < 2:
        raise ValueError(f"householder_product: k must be [..., n_h, n], got shape {k.shape}")
    batch, n_h, n = k.shape[:-2], k.shape[-2], k.shape[-1]
    if beta.shape != (*batch, n_h):
        raise ValueError(
            f"householder_product: beta must have shape {(*batch, n_h)} ([..., n_h]) to match "
            f"k {k.shape}; got {beta.shape}"
        )
    dtypes = [k.dtype, beta.dtype]
    if v is not None:
        v = _float(v, "v", "householder_product")
        if v.ndim != k.ndim or v.shape[:-1] != (*batch, n_h):
            raise ValueError(
                f"householder_product: v must have shape {(*batch, n_h, 'm')} ([..., n_h, m]) "
                f"to match k {k.shape}; got {v.shape}"
            )
        dtypes.append(v.dtype)
    if gate is not None:
        gate = _float(gate, "gate", "householder_product")
        if gate.shape != batch:
            raise ValueError(
                f"householder_product: gate must have shape {batch} ([...]), got {gate.shape}"
            )
        dtypes.append(gate.dtype)
    dt = jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)
    k, beta = k.astype(dt), beta.astype(dt)
    eye = jnp.eye(n, dtype=dt)
    A = jnp.broadcast_to(eye, (*batch, n, n))
    if gate is not None:
        A = A * gate.astype(dt)[..., None, None]
    b = jnp.zeros((*batch, n) if v is None else (*batch, n, v.shape[-1]), dt)
    for j in range(n_h):
        kj, bj = k[..., j, :], beta[..., j]
        H = eye - bj[..., None, None] * kj[..., :, None] * kj[..., None, :]
        A = jnp.einsum("...ij,...jk->...ik", H, A, precision=_HI)
        if v is not None:
            b = jnp.einsum("...ij,...jm->...im", H, b, precision=_HI)
            b = b + bj[..., None, None] * kj[..., :, None] * v[..., j, None, :].astype(dt)
    return Affine(A, b)


# ------------------------------------------------------------------------------------------
# Walsh-Hadamard
# ------------------------------------------------------------------------------------------
def _check_pow2(n: int, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"{name}: the Walsh-Hadamard size must be an int, got {n!r}")
    n = int(n)
    if n < 1 or n & (n - 1):
        raise ValueError(f"{name}: the Walsh-Hadamard size must be a power of two, got n = {n}")
    return int(math.log2(n))


def hadamard_matrix(n: int, dtype=jnp.float32) -> jax.Array:
    """The normalised Sylvester-Hadamard matrix ``H_n / sqrt(n)``, ``[n, n]``."""
    _check_pow2(n, "hadamard_matrix")
    n = int(n)
    i = jnp.arange(n)
    bits = jnp.bitwise_and(i[:, None], i[None, :])
    parity = jnp.zeros_like(bits)
    for s in range(max(1, n.bit_length())):
        parity = parity ^ ((bits >> s) & 1)
    return ((1 - 2 * parity) / math.sqrt(n)).astype(dtype)


def fwht(x, axis: int = -1) -> jax.Array:
    """The normalised fast Walsh-Hadamard transform ``H_n x / sqrt(n)`` along ``axis``.

    ``O(n log n)``; equals ``hadamard_matrix(n) @ x`` along that axis (Sylvester order).
    """
    x = _float(x, "x", "fwht")
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise TypeError(f"fwht: axis must be an int, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"fwht: axis {axis} is out of range for x of shape {x.shape}")
    axis = int(axis) % x.ndim
    n = x.shape[axis]
    levels = _check_pow2(n, "fwht")
    lead, trail = x.shape[:axis], x.shape[axis + 1 :]
    y = x.reshape(*lead, *([2] * levels), *trail)
    for level in range(levels):
        ax = len(lead) + level
        a = lax.index_in_dim(y, 0, ax, keepdims=True)
        c = lax.index_in_dim(y, 1, ax, keepdims=True)
        y = jnp.concatenate([a + c, a - c], axis=ax)
    return (y / math.sqrt(n)).astype(x.dtype).reshape(x.shape)


def walsh_hadamard(w) -> jax.Array:
    """The dense SLiCE Walsh-Hadamard transition ``Hadamard(n)/sqrt(n) @ diag(w)``.

    Args:
      w: ``[..., n]``, n a power of two.

    Returns:
      ``[..., n, n]`` (DENSE: products of these are not Walsh-Hadamard).
    """
    w = _float(w, "w", "walsh_hadamard")
    _check_pow2(w.shape[-1], "walsh_hadamard: w")
    return hadamard_matrix(w.shape[-1], w.dtype) * w[..., None, :]


def walsh_hadamard_apply(w, h) -> jax.Array:
    """``walsh_hadamard(w) @ h`` in ``O(n log n)``.

    Args:
      w: ``[..., n]``, n a power of two.
      h: a vector ``[..., n]`` or matrix state ``[..., n, m]`` (rank one above ``w``).
    """
    w, h = _float(w, "w", "walsh_hadamard_apply"), _float(h, "h", "walsh_hadamard_apply")
    _check_pow2(w.shape[-1], "walsh_hadamard_apply: w")
    _check_state(h, w.shape, "walsh_hadamard_apply")
    if h.ndim == w.ndim + 1:
        return fwht(w[..., None] * h, axis=-2)
    return fwht(w * h, axis=-1)


# ------------------------------------------------------------------------------------------
# Diagonal plus low rank, sparse
# ------------------------------------------------------------------------------------------
def _check_state(h, diag_shape: tuple, fn: str) -> None:
    """ValueError unless ``h`` is a vector state ``[..., n]`` or, one rank above the diagonal
    ``[..., n]``, a matrix state ``[..., n, m]`` (batch axes broadcasting with it)."""
    diag_shape = tuple(diag_shape)
    vec = h.shape if h.ndim != len(diag_shape) + 1 else h.shape[:-1]
    try:
        ok = vec[-1:] == diag_shape[-1:] and bool(jnp.broadcast_shapes(vec, diag_shape))
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{fn}: h must have shape {diag_shape} ([..., n]) or "
                         f"{(*diag_shape, 'm')} ([..., n, m]), got {h.shape}")


def _check_dplr(d, u, v, fn):
    d, u, v = _float(d, "d", fn), _float(u, "u", fn), _float(v, "v", fn)
    n = d.shape[-1]
    if u.ndim != d.ndim + 1 or u.shape[:-1] != d.shape:
        raise ValueError(f"{fn}: u must have shape {(*d.shape, 'r')} ([..., n, r]), got {u.shape}")
    if v.shape != u.shape:
        raise ValueError(f"{fn}: v must have the shape of u {u.shape} ([..., n, r]), got {v.shape}")
    return d, u, v, n


def dplr(d, u, v) -> jax.Array:
    """``diag(d) + u v^T``.

    Args:
      d: ``[..., n]``; u, v: ``[..., n, r]``.

    Returns:
      ``[..., n, n]``.
    """
    d, u, v, n = _check_dplr(d, u, v, "dplr")
    return DIAGONAL.to_dense(d) + jnp.einsum("...ir,...jr->...ij", u, v, precision=_HI)


def dplr_apply(d, u, v, h) -> jax.Array:
    """``(diag(d) + u v^T) h`` in ``O(n r)`` per column of h (``h [..., n]`` or ``[..., n, m]``)."""
    d, u, v, n = _check_dplr(d, u, v, "dplr_apply")
    h = _float(h, "h", "dplr_apply")
    _check_state(h, d.shape, "dplr_apply")
    if h.ndim == d.ndim + 1:
        vh = jnp.einsum("...nr,...nm->...rm", v, h, precision=_HI)
        return d[..., None] * h + jnp.einsum("...nr,...rm->...nm", u, vh, precision=_HI)
    vh = jnp.einsum("...nr,...n->...r", v, h, precision=_HI)
    return d * h + jnp.einsum("...nr,...r->...n", u, vh, precision=_HI)


def sparse(values, mask) -> jax.Array:
    """A dense matrix restricted to a fixed sparsity pattern: ``values * mask``.

    Args:
      values: ``[..., n, n]``.
      mask: ``[n, n]`` booleans or 0/1 (the pattern, fixed across tokens).
    """
    values = _float(values, "values", "sparse")
    try:
        mask = jnp.asarray(mask)
    except TypeError as e:
        raise TypeError(f"sparse: mask must be an array of booleans or 0/1, got "
                        f"{type(mask).__name__}") from e
    if values.ndim < 2 or values.shape[-1] != values.shape[-2]:
        raise ValueError(f"sparse: values must be [..., n, n], got {values.shape}")
    if mask.shape != values.shape[-2:]:
        raise ValueError(
            f"sparse: mask must have shape {values.shape[-2:]} ([n, n]), got {mask.shape}"
        )
    if mask.dtype != bool:
        if not (jnp.issubdtype(mask.dtype, jnp.integer) or jnp.issubdtype(mask.dtype,
                                                                        jnp.floating)):
            raise TypeError(f"sparse: mask must be booleans or 0/1, got dtype {mask.dtype}")
        try:
            pattern = bool(jnp.all((mask == 0) | (mask == 1)))
        except jax.errors.ConcretizationTypeError:  # traced: checked where it is concrete
            pattern = True
        if not pattern:
            raise ValueError("sparse: mask must be booleans or 0/1 (a fixed pattern), got "
                             "other values")
    return jnp.where(mask.astype(bool), values, jnp.zeros((), values.dtype))


# ------------------------------------------------------------------------------------------
# SLiCE: A_t = I + sum_i x_t^i A^i
# ------------------------------------------------------------------------------------------
def _check_structure(structure, fn: str = ""):
    if structure not in STRUCTURES:
        where = f"{fn}: " if fn else ""
        raise ValueError(f"{where}structure must be one of {STRUCTURES}, got {structure!r}")


def _slice_parts(x, weights, structure, fn):
    """Validates ``(x, weights)`` for ``structure``; returns (x, parts, n)."""
    _check_structure(structure, fn)
    x = _float(x, "x", fn)
    if x.ndim < 1:
        raise ValueError(f"{fn}: x must be [..., d_in], got a scalar")
    d_in = x.shape[-1]

    def lead(w, name, rank):
        w = _float(w, name, f"{fn}({structure!r})")
        if w.ndim != rank or w.shape[0] != d_in:
            raise ValueError(
                f"{fn}({structure!r}): {name} must have {rank} axes with d_in = {d_in} first, "
                f"got shape {w.shape}"
            )
        return w

    if structure == "sparse":
        if not isinstance(weights, tuple | list) or len(weights) != 2:
            raise TypeError(
                f"{fn}('sparse'): weights must be a tuple (values [d_in, n, n], mask [n, n])"
            )
        values = lead(weights[0], "weights[0] (values)", 3)
        mask = jnp.asarray(weights[1])
        n = values.shape[-1]
        if values.shape[1:] != (n, n) or mask.shape != (n, n):
            raise ValueError(
                f"{fn}('sparse'): values must be [d_in, n, n] and mask [n, n]; got "
                f"{values.shape} and {mask.shape}"
            )
        return x, (values, mask), n
    if structure == "dplr":
        if not isinstance(weights, tuple | list) or len(weights) != 3:
            raise TypeError(
                f"{fn}('dplr'): weights must be a tuple "
                "(d [d_in, n], u [d_in, n, r], v [d_in, n, r])"
            )
        d = lead(weights[0], "weights[0] (d)", 2)
        u = lead(weights[1], "weights[1] (u)", 3)
        v = lead(weights[2], "weights[2] (v)", 3)
        n = d.shape[1]
        if u.shape[1] != n or v.shape != u.shape:
            raise ValueError(
                f"{fn}('dplr'): u and v must be [d_in, n={n}, r]; got {u.shape} and {v.shape}"
            )
        return x, (d, u, v), n
    if structure in ("diagonal", "walsh_hadamard"):
        w = lead(weights, "weights", 2)
        n = w.shape[1]
        if structure == "walsh_hadamard":
            _check_pow2(n, f"{fn}('walsh_hadamard'): weights")
        return x, (w,), n
    if structure == "block_diagonal":
        w = lead(weights, "weights", 4)
        if w.shape[2] != w.shape[3]:
            raise ValueError(
                f"{fn}('block_diagonal'): weights must be [d_in, n/bs, bs, bs], got {w.shape}"
            )
        return x, (w,), w.shape[1] * w.shape[2]
    w = lead(weights, "weights", 3)  # dense
    if w.shape[1] != w.shape[2]:
        raise ValueError(f"{fn}('dense'): weights must be [d_in, n, n], got {w.shape}")
    return x, (w,), w.shape[1]


def _mix(x, w):
    """``sum_i x^i w_i`` for ``x [..., d_in]``, ``w [d_in, *rest]`` -> ``[..., *rest]``."""
    return jnp.tensordot(x, w.astype(jnp.result_type(x, w)), axes=(-1, 0), precision=_HI)


def slice_transition(x, weights, structure: str) -> jax.Array:
    """The SLiCE transition ``A_t = I + sum_i x_t^i A^i`` in its monoid's storage format.

    Args:
      x: token features ``[..., d_in]``.
      weights: the ``A^i`` for ``structure``:
        ``"diagonal"`` ``[d_in, n]``; ``"block_diagonal"`` ``[d_in, n/bs, bs, bs]``;
        ``"dense"`` ``[d_in, n, n]``; ``"walsh_hadamard"`` ``[d_in, n]`` (``A^i = H diag(w_i)``,
        n a power of two); ``"sparse"`` ``(values [d_in, n, n], mask [n, n])``;
        ``"dplr"`` ``(d [d_in, n], u [d_in, n, r], v [d_in, n, r])``
        (``A^i = diag(d_i) + u_i v_i^T``).
      structure: one of ``STRUCTURES``.

    Returns:
      ``[..., n]`` (diagonal), ``[..., n/bs, bs, bs]`` (block-diagonal) or ``[..., n, n]``.
      Use ``slice_monoid(structure, weights)`` for the matching monoid.
    """
    x, parts, n = _slice_parts(x, weights, structure, "slice_transition")
    if structure == "diagonal":
        return 1.0 + _mix(x, parts[0])
    if structure == "block_diagonal":
        m = _mix(x, parts[0])
        return BlockDiagonal(m.shape[-1]).eye(m) + m
    eye = jnp.eye(n, dtype=jnp.result_type(x, parts[0]))
    if structure == "dense":
        return eye + _mix(x, parts[0])
    if structure == "sparse":
        values, mask = parts
        return eye + sparse(_mix(x, values), mask)
    if structure == "walsh_hadamard":
        return eye + walsh_hadamard(_mix(x, parts[0]))
    d, u, v = parts  # dplr: sum_i x^i u_i v_i^T = (u * x) v^T summed over (i, r)
    uu = jnp.einsum("...i,inr->...nir", x, u, precision=_HI).reshape(*x.shape[:-1], n, -1)
    vv = jnp.broadcast_to(jnp.moveaxis(v, 0, 1).reshape(n, -1), uu.shape)
    return eye + dplr(_mix(x, d), uu, vv)


def slice_monoid(structure: str, weights) -> Monoid:
    """The monoid whose storage format ``slice_transition(x, weights, structure)`` returns."""
    _check_structure(structure, "slice_monoid")
    if structure == "diagonal":
        return DIAGONAL
    if structure == "block_diagonal":
        return BlockDiagonal(int(jnp.shape(weights)[-1]))
    return DENSE


def slice_apply(x, weights, structure: str, h) -> jax.Array:
    """``A_t h`` for the SLiCE transition without forming dense matrices.

    Costs per token: diagonal ``O(n)``, block-diagonal ``O(n bs)``, Walsh-Hadamard
    ``O(n log n)``, DPLR ``O(n r d_in)``, sparse and dense ``O(n^2)`` (the masked matrix).

    Args:
      x: ``[..., d_in]``; weights, structure: as in ``slice_transition``.
      h: the state ``[..., n]``.
    """
    x, parts, n = _slice_parts(x, weights, structure, "slice_apply")
    h = _float(h, "h", "slice_apply")
    if h.shape[-1] != n:
        raise ValueError(f"slice_apply: h must be [..., n] with n = {n}, got {h.shape}")
    if structure == "diagonal":
        return h + _mix(x, parts[0]) * h
    if structure == "block_diagonal":
        w = parts[0]
        return h + BlockDiagonal(w.shape[-1]).matvec(_mix(x, w), h, matrix_state=False)
    if structure == "walsh_hadamard":
        return h + walsh_hadamard_apply(_mix(x, parts[0]), h)
    if structure == "dplr":
        d, u, v = parts
        vh = jnp.einsum("inr,...n->...ir", v, h, precision=_HI)
        low = jnp.einsum("...i,inr,...ir->...n", x, u, vh, precision=_HI)
        return h + _mix(x, d) * h + low
    if structure == "sparse":
        values, mask = parts
        M = sparse(_mix(x, values), mask)
    else:
        M = _mix(x, parts[0])
    return h + jnp.einsum("...ij,...j->...i", M, h, precision=_HI)


# ------------------------------------------------------------------------------------------
# Eigenvalue ranges
# ------------------------------------------------------------------------------------------
def unit_gate(x) -> jax.Array:
    """``sigmoid(x)``: a diagonal gate in ``[0, 1]``."""
    return jax.nn.sigmoid(_float(x, "x", "unit_gate"))


def signed_gate(x) -> jax.Array:
    """``2 sigmoid(x) - 1 = tanh(x / 2)``: a diagonal gate in ``[-1, 1]``."""
    return jnp.tanh(0.5 * _float(x, "x", "signed_gate"))


def mamba_gate(dt, A, *, signed: bool = False) -> jax.Array:
    """Mamba's decay ``a = exp(softplus(dt) * A)`` (``A < 0``), in ``[0, 1]``.

    With ``signed=True`` returns ``2a - 1`` in ``[-1, 1]`` (Grazzi et al.), so that a large
    step ``dt`` drives the eigenvalue to -1 rather than 0.
    """
    signed = _check_bool(signed, "signed", "mamba_gate")
    dt, A = _float(dt, "dt", "mamba_gate"), _float(A, "A", "mamba_gate")
    try:
        jnp.broadcast_shapes(dt.shape, A.shape)
    except ValueError:
        raise ValueError(f"mamba_gate: dt {dt.shape} and A {A.shape} must broadcast "
                         "together") from None
    a = jnp.exp(jax.nn.softplus(dt) * A)
    return 2.0 * a - 1.0 if signed else a


def householder_beta(x, *, signed: bool = False) -> jax.Array:
    """``sigmoid(x)`` in ``[0, 1]`` or ``2 sigmoid(x)`` in ``[0, 2]`` (eigenvalue ``1 - beta``)."""
    signed = _check_bool(signed, "signed", "householder_beta")
    s = jax.nn.sigmoid(_float(x, "x", "householder_beta"))
    return 2.0 * s if signed else s
