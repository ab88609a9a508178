"""Helpers shared by the ops: argument checks, implementation dispatch, log-space gates, chunks.

Gates enter the chunkwise forms as cumulative products taken in log space with the sign kept
apart: ``prod_{s<r<=t} g_r = (-1)^{#neg} exp(sum_{s<r<=t} log|g_r|)``. The sums over a range
are formed directly (masked cumulative sums, never as the difference of two long cumulative
sums), so gates near 0, near 1 and negative are all exact to rounding, and no product of
gates is ever divided by another.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lrnn.monoid import Affine, Monoid, compute_dtype
from lrnn.monoid import scan as monoid_scan

IMPLEMENTATIONS = ("auto", "sequential", "scan", "chunked", "pallas")
CHUNK_COMBINES = ("loop", "scan")
HIGHEST = lax.Precision.HIGHEST

# |g| is floored here inside the log so that a gate of exactly 0 gives a finite log; the
# error this makes is a factor 1e-20 on terms that are already that small, and the floor is
# small enough for 1 / LOG_FLOOR to stay finite in float32 gradients.
LOG_FLOOR = 1e-20


# ------------------------------------------------------------------------------------------
# Argument checks (all at trace time, messages name the argument)
# ------------------------------------------------------------------------------------------
def as_float(x, name: str, op: str) -> jax.Array:
    """``x`` as an array; raises TypeError unless it is floating point."""
    if x is None:
        raise TypeError(f"{op}: {name} must be an array, got None")
    try:
        x = jnp.asarray(x)
    except TypeError as e:  # e.g. a list of arrays of different shapes
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}") from e
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{op}: {name} must be a floating-point array, got dtype {x.dtype}")
    return x


def check_shape(x: jax.Array, want: tuple, name: str, op: str, doc: str) -> None:
    """Raises ValueError unless ``x.shape`` matches ``want`` (None = any size)."""
    ok = x.ndim == len(want) and all(w is None or w == s for w, s in zip(want, x.shape))
    if not ok:
        shown = tuple("?" if w is None else w for w in want)
        raise ValueError(f"{op}: {name} must have shape {doc} = {shown}, got {x.shape}")


def check_positive_int(value, name: str, op: str) -> int:
    """``value`` as a python int (NumPy integers accepted); ValueError unless it is >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    return int(value)


def check_choice(value, choices: tuple, name: str, op: str) -> str:
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {choices}, got {value!r}")
    return value


def check_bool(value, name: str, op: str) -> bool:
    """``value`` as a bool (NumPy bools accepted); TypeError otherwise (a string such as "no"
    would otherwise count as True)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")
    return bool(value)


def check_sequence_axis(axis_name, exchange, op: str) -> None:
    """The sequence-parallel arguments of an op: ``axis_name`` None or the name (str) of the
    mesh axis time is split over (all that ``lrnn.parallel.shard_prefix`` takes), ``exchange``
    one of ``lrnn.parallel.EXCHANGES``, checked without ``axis_name`` too (a typo is an error
    on one device as well). The rules are ``lrnn.parallel``'s own, so that the ops, the scans
    and ``sequence_axis`` accept the same."""
    from lrnn import parallel  # lazy, as in shard_prefix

    parallel._check_exchange(exchange, op)
    if axis_name is not None:
        parallel._check_axis_name(axis_name, op)


def check_scale(scale, op: str):
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        if not (hasattr(scale, "shape") and jnp.shape(scale) == ()):
            raise TypeError(f"{op}: scale must be a Python float or a scalar, got {scale!r}")
    return scale


def out_dtype(*xs) -> jnp.dtype:
    """The floating dtype outputs are returned in: the inputs' common dtype."""
    return jnp.result_type(*[x.dtype for x in xs if x is not None])


def calc_dtype(*xs) -> jnp.dtype:
    """The dtype the arithmetic runs in: at least float32."""
    return compute_dtype(*[x.dtype for x in xs if x is not None])


# ------------------------------------------------------------------------------------------
# Implementation dispatch
# ------------------------------------------------------------------------------------------
def _pallas_module():
    import pallas_kernels  # lazy: the kernels are optional on CPU

    return pallas_kernels


def pallas_available(fn_name: str) -> bool:
    """Whether ``pallas_kernels.<fn_name>`` exists and the backend compiles Pallas."""
    if jax.default_backend() not in ("gpu", "tpu"):
        return False
    try:
        mod = _pallas_module()
    except ImportError:
        return False
    return hasattr(mod, fn_name)


def resolve_implementation(implementation, op: str, pallas_name: str | None, *,
                           family: str | None = None, dims: dict | None = None,
                           dtype=None) -> str:
    """Checks ``implementation`` and replaces "auto" by a concrete choice.

    "auto" is the implementation measured fastest for this op's shapes on this backend
    (``lrnn.ops._auto``: the rankings of ``experiments/bench/auto.py``), among those that can
    run here; without ``dims`` or measurements it is "chunked".
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{op}: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}"
        )
    if implementation == "pallas" and pallas_name is None:
        raise ValueError(f"{op}: there is no 'pallas' implementation of this op")
    if implementation == "auto":
        from lrnn.ops import _auto

        available = ("sequential", "scan", "chunked")
        if pallas_name is not None and pallas_available(pallas_name):
            available += ("pallas",)
        if family is None or dims is None:
            return _auto.FALLBACK
        return _auto.choose(family, dims, dtype, available)
    return implementation


def empty(*xs) -> bool:
    """Whether any of the arrays has no elements (T = 0, B = 0, n_h = 0, ...): the ops then
    run their token loop, which returns empty outputs and the initial state as the final
    one, whatever ``implementation`` says (the chunked forms and kernels need a chunk)."""
    return any(x is not None and x.size == 0 for x in xs)


def pallas_fn(fn_name: str, op: str):
    mod = _pallas_module()
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise NotImplementedError(f"{op}: pallas_kernels.{fn_name} does not exist (yet)")
    return fn


def varying_zeros(shape, dtype, axis_name) -> jax.Array:
    """Zeros typed as varying over ``axis_name`` (inside ``shard_map``), so that loops whose
    carries start from them and mix in sharded data keep one type (the replication check)."""
    return jnp.zeros(shape, dtype) + (lax.axis_index(axis_name) * 0).astype(dtype)


def shard_prefix(monoid: Monoid, summary: Affine, h0, *, axis_name, exchange):
    """Sequence parallelism: (state entering this shard, global final state)."""
    from lrnn import parallel  # lazy: written apart from the ops

    return parallel.shard_prefix(monoid, summary, h0, axis_name=axis_name, exchange=exchange)


# ------------------------------------------------------------------------------------------
# Log-space gates
# ------------------------------------------------------------------------------------------
@jax.custom_jvp
def log_abs(g: jax.Array) -> jax.Array:
    """``log|g|`` with ``|g|`` floored at :data:`LOG_FLOOR`.

    The derivative is ``1 / g`` (with the same floor), so that ``exp(sum log|g|)``
    differentiates like the product of the gates, also at ``g = 0``: there the factor
    ``LOG_FLOOR`` in the value and ``1 / LOG_FLOOR`` in the derivative cancel. This needs
    every consumer's gradient with respect to ``log|g_r|`` to be formed only from products
    that contain ``g_r`` (true of cumulative sums and of :func:`segment_decay`).
    """
    return jnp.log(jnp.maximum(jnp.abs(g), LOG_FLOOR))


@log_abs.defjvp
def _log_abs_jvp(primals, tangents):
    (g,), (dg,) = primals, tangents
    safe = jnp.where(g < 0, -1.0, 1.0).astype(g.dtype) * jnp.maximum(jnp.abs(g), LOG_FLOOR)
    return log_abs(g), dg / safe


def log_sign(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log|g|, [g < 0])``: the log magnitude (floored) and the negative count (int32)."""
    return log_abs(g), (lax.stop_gradient(g) < 0).astype(jnp.int32)


def _parity_sign(count: jax.Array, dtype) -> jax.Array:
    """``(-1)^count`` for integer-valued ``count`` (int, or float holding exact integers)."""
    return (1 - 2 * (count % 2)).astype(dtype)


def chunk_cumsum(x: jax.Array, axis: int = -1, *, reverse: bool = False) -> jax.Array:
    """Inclusive cumulative sum along a (short, chunk-sized) axis, as a matmul.

    ``jnp.cumsum`` lowers to a ``reduce_window`` that XLA runs slowly on CPU for the
    ``[..., L]`` and ``[..., L, L]`` chunk tensors (about 4x slower than this product with a
    triangular matrix of ones; on GPU/TPU the product runs on the matrix units). Computed in
    float32 at HIGHEST precision (exact for integer counts below 2^24); float inputs keep their
    dtype, integer inputs come back as float32.
    """
    dt = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    x = jnp.moveaxis(x.astype(dt), axis, -1)
    L = x.shape[-1]
    tri = jnp.tril(jnp.ones((L, L), dt)) if reverse else jnp.triu(jnp.ones((L, L), dt))
    return jnp.moveaxis(einsum("...s,st->...t", x, tri), -1, axis)


def segment_decay(f: jax.Array, neg: jax.Array) -> jax.Array:
    """``D[..., t, s] = prod_{s<r<=t} g_r`` for ``s <= t`` and 0 above the diagonal.

    Args:
      f: ``log|g|`` ``[..., L]``.
      neg: ``[g < 0]`` ``[..., L]`` (int).

    Returns:
      ``[..., L, L]``: ``sign * exp(F_t - F_s)`` with ``F`` the inclusive cumulative sum of
      ``f`` within the chunk, masked to the causal triangle before the exp (so no ``inf``
      reaches the forward or backward pass), the sign ``sigma_t sigma_s`` from the parities
      ``sigma_t = (-1)^{#neg up to t}`` of the exact integer counts of negative gates. The
      difference of cumulative logs costs an absolute error of about ``eps |F|`` in the
      exponent, i.e. a relative error ``eps |sum_chunk log|g||``. The gradient is formed
      without differences (see :func:`_segment_decay_bwd`).
    """
    sigma = _parity_sign(chunk_cumsum(neg), f.dtype)  # sign of prod_{r<=t} g_r
    return _segment_decay(f, sigma[..., :, None] * sigma[..., None, :])


def _causal(L: int, k: int = 0) -> jax.Array:
    return jnp.tril(jnp.ones((L, L), bool), k)


@jax.custom_vjp
def _segment_decay(f, sign):
    L = f.shape[-1]
    causal = _causal(L)
    F = chunk_cumsum(f)
    logd = jnp.where(causal, F[..., :, None] - F[..., None, :], 0.0)
    return jnp.where(causal, sign * jnp.exp(logd), 0.0)


def _segment_decay_fwd(f, sign):
    D = _segment_decay(f, sign)
    return D, (D, sign)


def _segment_decay_bwd(res, dD):
    """``df_r = sum_{t >= r} sum_{s < r} dD[t, s] D[t, s]``: only the products that contain
    ``g_r``. Autodiff of ``F_t - F_s`` would add and cancel the other terms, and multiplied by
    ``1 / g_r`` (the derivative of ``log|g_r|``) their rounding residue explodes for small
    gates; summing only the spans that contain ``r`` keeps the gradient exact to rounding,
    also at ``g_r = 0``."""
    D, sign = res
    L = D.shape[-1]
    E = jnp.where(_causal(L, -1), dD * D, 0.0)  # the diagonal (empty span) has no f
    below = chunk_cumsum(E, -2, reverse=True)  # [r, s] = sum_{t>=r} E[t, s]
    df = jnp.sum(jnp.where(_causal(L, -1), below, 0.0), axis=-1)  # sum over s < r
    return df, jnp.zeros_like(sign)


_segment_decay.defvjp(_segment_decay_fwd, _segment_decay_bwd)


def prefix_decay(f: jax.Array, neg: jax.Array) -> jax.Array:
    """``P[..., t] = prod_{r<=t} g_r`` (inclusive), ``[..., L]``."""
    return _parity_sign(chunk_cumsum(neg), f.dtype) * jnp.exp(chunk_cumsum(f))


def running_decay(g: jax.Array, axis: int) -> jax.Array:
    """``prod_{r<=t} g_r`` along a long ``axis`` (a whole sequence), signs included: log
    magnitudes and negative counts summed with ``jnp.cumsum`` (a matmul with a triangular
    matrix, as in :func:`chunk_cumsum`, would be quadratic in the length)."""
    f, neg = log_sign(g)
    return _parity_sign(jnp.cumsum(neg, axis=axis), f.dtype) * jnp.exp(jnp.cumsum(f, axis=axis))


def suffix_decay(f: jax.Array, neg: jax.Array) -> jax.Array:
    """``S[..., s] = prod_{s<r<L} g_r`` (exclusive: the decay from s to the chunk end)."""

    def rev_excl(x):
        c = chunk_cumsum(x, reverse=True)  # inclusive suffix sums
        pad = jnp.zeros_like(c[..., :1])
        return jnp.concatenate([c[..., 1:], pad], axis=-1)

    return _parity_sign(rev_excl(neg), f.dtype) * jnp.exp(rev_excl(f))


_INV_BASE = 8  # diagonal blocks inverted by substitution; larger blocks merged by matmuls


def unit_lower_inverse(M: jax.Array) -> jax.Array:
    """``(I + M)^{-1}`` for strictly lower-triangular ``M [..., L, L]``.

    The diagonal blocks of size 8 are inverted by row-by-row forward substitution
    (``X_i = e_i - sum_{j<i} M_ij X_j``, unrolled, one batched vector-matrix product per row),
    then merged pairwise into blocks of 16, 32, ...,
    ``[[X1, 0], [A21, X2]]^{-1} = [[X1^{-1}, 0], [-X2^{-1} A21 X1^{-1}, X2^{-1}]]``:
    ``log2(L / 8)`` levels of batched matmuls (``L`` is padded with identity to 8 times a
    power of two). Exact up to rounding, differentiable by autodiff. On CPU this is 3-4x
    faster than merging from 1x1 blocks (tiny batched matmuls are slow there) and much
    faster than a batched triangular solve; elsewhere it is as parallel as a matmul.
    """
    L = M.shape[-1]
    base = min(_INV_BASE, L)
    P = base << max((-(-L // base)) - 1, 0).bit_length()  # base * 2^k >= L
    if P != L:
        M = jnp.pad(M, [(0, 0)] * (M.ndim - 2) + [(0, P - L), (0, P - L)])
    batch = M.shape[:-2]
    nb = P // base
    Mb = M.reshape(batch + (nb, base, nb, base))
    inv = _substitution_inverse(jnp.stack([Mb[..., j, :, j, :] for j in range(nb)], -3))
    s = base
    while s < P:
        nb = P // (2 * s)
        # A21 of each pair j: rows (2j+1)s..(2j+2)s, cols 2js..(2j+1)s.
        Mb = M.reshape(batch + (nb, 2, s, nb, 2, s))
        a21 = jnp.stack([Mb[..., j, 1, :, j, 0, :] for j in range(nb)], -3)
        x = inv.reshape(batch + (nb, 2, s, s))
        x1, x2 = x[..., 0, :, :], x[..., 1, :, :]
        low = -einsum("...jab,...jbc->...jac", x2, einsum("...jab,...jbc->...jac", a21, x1))
        top = jnp.concatenate([x1, jnp.zeros_like(x1)], axis=-1)
        bottom = jnp.concatenate([low, x2], axis=-1)
        inv = jnp.concatenate([top, bottom], axis=-2)  # [..., nb, 2s, 2s]
        s *= 2
    inv = inv.reshape(batch + (P, P))
    return inv[..., :L, :L]


def _substitution_inverse(M: jax.Array) -> jax.Array:
    """``(I + M)^{-1}`` for small strictly lower-triangular ``M [..., n, n]``, row by row."""
    n = M.shape[-1]
    eye = jnp.eye(n, dtype=M.dtype)
    rows = [jnp.broadcast_to(eye[0], M.shape[:-2] + (n,))]
    for i in range(1, n):
        X = jnp.stack(rows, -2)  # [..., i, n]: rows 0..i-1 of the inverse
        rows.append(eye[i] - einsum("...j,...jl->...l", M[..., i, :i], X))
    return jnp.stack(rows, -2)


# ------------------------------------------------------------------------------------------
# Chunks
# ------------------------------------------------------------------------------------------
def pad_time(x: jax.Array, total: int, value=0.0, axis: int = 1) -> jax.Array:
    """Pads axis ``axis`` of ``x`` with ``value`` up to length ``total``."""
    extra = total - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def n_chunks(T: int, C: int) -> int:
    return -(-T // C)


def to_chunks(x: jax.Array, C: int, value=0.0) -> jax.Array:
    """``[B, T, ...] -> [B, N, C, ...]``, padding time with ``value``."""
    B, T = x.shape[:2]
    N = n_chunks(T, C)
    x = pad_time(x, N * C, value)
    return x.reshape(B, N, C, *x.shape[2:])


def combine_chunks(
    monoid: Monoid,
    summaries: Affine,
    h0: jax.Array,
    *,
    axis: int,
    chunk_combine: str,
) -> tuple[jax.Array, jax.Array]:
    """States entering each chunk and the final state, from the chunk summaries.

    Args:
      monoid: format of ``summaries.A``.
      summaries: one ``Affine`` per chunk, chunk axis ``axis`` (a batch axis of the elements).
      h0: state before the first chunk, shaped like ``summaries.b`` without the chunk axis.
      axis: the chunk axis.
      chunk_combine: "loop" (``lax.scan`` over chunks) or "scan" (``lrnn.scan``).

    Returns:
      ``(h_in, h_final)``: ``h_in`` like ``summaries.b`` (state entering chunk j),
      ``h_final`` like ``h0``.
    """
    A, b = summaries
    if chunk_combine == "scan":
        h_out = monoid_scan(monoid, summaries, h0, axis=axis)
        h_final = jnp.take(h_out, -1, axis=axis)
        prev = lax.slice_in_dim(h_out, 0, h_out.shape[axis] - 1, axis=axis)
        h_in = jnp.concatenate([jnp.expand_dims(h0, axis), prev], axis=axis)
        return h_in, h_final

    def step(h, ab):
        return monoid.apply(Affine(*ab), h), h

    h_final, h_in = lax.scan(step, h0, (jnp.moveaxis(A, axis, 0), jnp.moveaxis(b, axis, 0)))
    return jnp.moveaxis(h_in, 0, axis), h_final


def fold_chunks(monoid: Monoid, summaries: Affine, *, axis: int) -> Affine:
    """The composition of all chunk summaries along ``axis`` (earliest first)."""
    A = jnp.moveaxis(summaries.A, axis, 0)
    b = jnp.moveaxis(summaries.b, axis, 0)

    def step(acc, ab):
        return monoid.combine(acc, Affine(*ab)), None

    first = Affine(A[0], b[0])
    total, _ = lax.scan(step, first, (A[1:], b[1:]))
    return total


def einsum(spec: str, *ops, dtype=None):
    """``jnp.einsum`` at HIGHEST precision, accumulating in ``dtype`` (default: ops' dtype)."""
    if dtype is None:
        dtype = jnp.result_type(*ops)
    return jnp.einsum(spec, *ops, precision=HIGHEST, preferred_element_type=dtype)
