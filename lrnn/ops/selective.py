"""Mamba's selective scan: a diagonal recurrence whose ``[D, N]`` state is read out by ``C_t``.

    a_t[d, n] = exp(delta_t[d] A[d, n])          (``signed=True``: 2 exp(.) - 1, in [-1, 1])
    h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + delta_t[d] u_t[d] B_t[n]
    y_t[d]    = sum_n C_t[n] h_t[d, n]

It is ``linear_recurrence`` over ``D N`` channels followed by a contraction, and the "scan"
and "chunked" implementations are exactly that: they build ``a``, ``b`` and ``h`` as
``[B, T, D, N]`` arrays. "sequential" (``lax.scan`` over tokens) and "pallas"
(``pallas_kernels.selective_scan``, one fused kernel each way, GPU) never build the gates and
hold one token's state at a time; under differentiation both keep every token's state for the
backward (the scan's residuals; the kernel's one write of ``h``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lrnn.ops import _common as c
from lrnn.ops.linear_recurrence import linear_recurrence

__all__ = ["selective_scan", "selective_scan_step", "selective_gates"]

_OP = "selective_scan"


def _validate(u, delta, A, Bm, Cm, h0):
    u = c.as_float(u, "u", _OP)
    delta = c.as_float(delta, "delta", _OP)
    A = c.as_float(A, "A", _OP)
    Bm = c.as_float(Bm, "Bm", _OP)
    Cm = c.as_float(Cm, "Cm", _OP)
    c.check_shape(u, (None, None, None), "u", _OP, "[B, T, D]")
    B, T, D = u.shape
    c.check_shape(delta, u.shape, "delta", _OP, f"[B, T, D] like u {u.shape}")
    c.check_shape(A, (D, None), "A", _OP, "[D, N]")
    N = A.shape[1]
    c.check_shape(Bm, (B, T, N), "Bm", _OP, "[B, T, N]")
    c.check_shape(Cm, (B, T, N), "Cm", _OP, "[B, T, N]")
    if h0 is not None:
        h0 = c.as_float(h0, "h0", _OP)
        c.check_shape(h0, (B, D, N), "h0", _OP, "[B, D, N]")
    return u, delta, A, Bm, Cm, h0


def selective_gates(u, delta, A, Bm, *, signed: bool = False):
    """The per-token ``(a, b)``, both ``[..., D, N]``: ``a = exp(delta A)`` (or ``2a - 1``),
    ``b = delta u B``.

    Args:
      u, delta: ``[..., D]``; A: ``[D, N]``; Bm: ``[..., N]``; signed: as in
        :func:`selective_scan`.
    """
    op = "selective_gates"
    signed = c.check_bool(signed, "signed", op)
    # shapes only: the arrays are used as given (NumPy arrays stay NumPy until jnp.exp)
    shapes = {n: jnp.shape(x) for n, x in (("u", u), ("delta", delta), ("A", A), ("Bm", Bm))}
    if not shapes["delta"]:
        raise ValueError(f"{op}: delta must have shape [..., D], got {shapes['delta']}")
    lead = shapes["delta"][:-1]
    if shapes["u"] != shapes["delta"]:
        raise ValueError(f"{op}: u must have shape [..., D] like delta {shapes['delta']}, got "
                         f"{shapes['u']}")
    D = shapes["delta"][-1]
    if len(shapes["A"]) != 2 or shapes["A"][0] != D:
        raise ValueError(f"{op}: A must have shape [D, N] = ({D}, '?'), got {shapes['A']}")
    N = shapes["A"][1]
    if shapes["Bm"] != lead + (N,):
        raise ValueError(f"{op}: Bm must have shape [..., N] = {lead + (N,)}, got "
                         f"{shapes['Bm']}")
    a = jnp.exp(delta[..., None] * A)
    if signed:
        a = 2.0 * a - 1.0
    return a, (delta * u)[..., None] * Bm[..., None, :]


def _sequential(u, delta, A, Bm, Cm, h0, signed):
    def step(h, x):
        u_t, d_t, b_t, c_t = x
        a, b = selective_gates(u_t, d_t, A, b_t, signed=signed)
        h = a * h + b
        return h, jnp.einsum("bdn,bn->bd", h, c_t, precision=c.HIGHEST)

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (u, delta, Bm, Cm))
    _, y = lax.scan(step, h0, xs)
    return jnp.moveaxis(y, 0, 1)


def selective_scan(
    u,
    delta,
    A,
    Bm,
    Cm,
    h0=None,
    *,
    signed: bool = False,
    implementation: str = "auto",
    chunk_size: int = 64,
    axis_name=None,
    exchange: str = "all_gather",
) -> jax.Array:
    """The outputs ``y_t = sum_n C_t[n] h_t[:, n]`` of the selective (Mamba) recurrence.

    Args:
      u: ``[B, T, D]`` the inputs.
      delta: ``[B, T, D]`` the step sizes (after the softplus; positive).
      A: ``[D, N]`` the continuous-time diagonal (negative: decays in (0, 1)).
      Bm: ``[B, T, N]`` the input projections.
      Cm: ``[B, T, N]`` the output projections.
      h0: ``[B, D, N]`` the state before the first token; zeros if None.
      signed: eigenvalues ``2 exp(delta A) - 1`` in [-1, 1] (Grazzi et al.) instead of
        ``exp(delta A)`` in [0, 1].
      implementation: "sequential" | "scan" | "chunked" | "pallas" | "auto". "scan" and
        "chunked" are ``linear_recurrence`` of that implementation over the ``D N`` channels;
        "pallas" is the fused kernel (GPU, or interpret mode on CPU; on a TPU
        ``linear_recurrence``'s kernel over the built gates).
      chunk_size: tokens per chunk of the chunked form.
      axis_name, exchange: sequence parallelism, as in ``linear_recurrence`` (the call then
        goes through ``linear_recurrence`` whatever the implementation, its "pallas" too).

    Returns:
      y ``[B, T, D]`` in the inputs' common dtype (arithmetic in at least float32).
    """
    u, delta, A, Bm, Cm, h0 = _validate(u, delta, A, Bm, Cm, h0)
    signed = c.check_bool(signed, "signed", _OP)
    B, T, D = u.shape
    N = A.shape[1]
    out_dt = c.out_dtype(u, delta, A, Bm, Cm)
    impl = c.resolve_implementation(
        implementation, _OP, "selective_scan", family="selective",
        dims=dict(B=B, T=T, H=1, dk=D * N), dtype=out_dt)
    chunk_size = c.check_positive_int(chunk_size, "chunk_size", _OP)
    c.check_sequence_axis(axis_name, exchange, _OP)
    if T == 0 or B == 0:  # nothing to scan: empty outputs, as the token loop gives
        return jnp.zeros((B, T, D), out_dt)
    dt = c.calc_dtype(u, delta, A, Bm, Cm, h0)
    u, delta, A, Bm, Cm = (x.astype(dt) for x in (u, delta, A, Bm, Cm))
    # the fused kernel has a GPU lowering (and runs in interpret mode on CPU); on a TPU
    # "pallas" is linear_recurrence's kernel over the built gates
    if impl == "pallas" and axis_name is None and jax.default_backend() != "tpu":
        if dt != jnp.float32:
            raise TypeError(f"{_OP}: the pallas kernel computes in float32; got {dt} inputs "
                            "(use implementation='sequential' for a float64 reference)")
        fn = c.pallas_fn("selective_scan", _OP)
        return fn(u, delta, A, Bm, Cm, h0, signed=signed).astype(out_dt)
    if impl == "sequential" and axis_name is None:
        h0 = jnp.zeros((B, D, N), dt) if h0 is None else h0.astype(dt)
        return _sequential(u, delta, A, Bm, Cm, h0, signed).astype(out_dt)
    a, b = selective_gates(u, delta, A, Bm, signed=signed)
    h = linear_recurrence(
        a.reshape(B, T, D * N), b.reshape(B, T, D * N),
        None if h0 is None else h0.reshape(B, D * N), implementation=impl,
        chunk_size=chunk_size, axis_name=axis_name, exchange=exchange,
    ).reshape(B, T, D, N)
    return jnp.einsum("btdn,btn->btd", h, Cm, precision=c.HIGHEST).astype(out_dt)


def selective_scan_step(u, delta, A, Bm, Cm, h=None, *, signed: bool = False):
    """One token (decoding): ``h <- a h + delta u B``, ``y = h C``.

    Args:
      u, delta: ``[B, D]``; A: ``[D, N]``; Bm, Cm: ``[B, N]``; h: ``[B, D, N]`` or None
        (zeros); signed: as in :func:`selective_scan`.

    Returns:
      ``(y [B, D], h [B, D, N])`` in at least float32.
    """
    op = "selective_scan_step"
    signed = c.check_bool(signed, "signed", op)
    u, delta, A, Bm, Cm = (c.as_float(x, n, op) for x, n in
                           zip((u, delta, A, Bm, Cm), ("u", "delta", "A", "Bm", "Cm")))
    c.check_shape(u, (None, None), "u", op, "[B, D]")
    Bsz, D = u.shape
    c.check_shape(delta, u.shape, "delta", op, f"[B, D] like u {u.shape}")
    c.check_shape(A, (D, None), "A", op, "[D, N]")
    N = A.shape[1]
    c.check_shape(Bm, (Bsz, N), "Bm", op, "[B, N]")
    c.check_shape(Cm, (Bsz, N), "Cm", op, "[B, N]")
    dt = c.calc_dtype(u, delta, A, Bm, Cm, h)
    if h is None:
        h = jnp.zeros((Bsz, D, N), dt)
    else:
        h = c.as_float(h, "h", op)
        c.check_shape(h, (Bsz, D, N), "h", op, "[B, D, N]")
    u, delta, A, Bm, Cm, h = (x.astype(dt) for x in (u, delta, A, Bm, Cm, h))
    a, b = selective_gates(u, delta, A, Bm, signed=signed)
    h = a * h + b
    return jnp.einsum("bdn,bn->bd", h, Cm, precision=c.HIGHEST), h
