"""Mamba's selective scan as one fused Pallas kernel, with its backward.

Per channel d and state index n:

    a_t[d, n] = exp(delta_t[d] A[d, n])        (or 2 exp(.) - 1 with signed=True)
    h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + delta_t[d] u_t[d] B_t[n]
    y_t[d]    = sum_n C_t[n] h_t[d, n]

The XLA forms build `a`, `b` and `h` as `[B, T, D, N]` arrays (N times the size of the
inputs) and pass over them several times each way. Here each program owns `BD` channels of one
batch row and walks time with its `[N, BD]` state in registers: it reads the `[B, T, D]` and
`[B, T, N]` inputs once and writes `y` once; the gates are never stored. The forward used
under differentiation also writes the states `h` once (`[T N, BD]` per program, f32), which the
backward reads once, instead of recomputing the sequence.

The backward walks time in reverse with `g_t = dL/dh_t = dy_t C_t + a_{t+1} g_{t+1}`:
`du_t = delta_t sum_n g_t B_t`, `ddelta_t = sum_n (g_t h_{t-1} a'_t A + g_t u_t B_t)`,
`dA = sum_t g_t h_{t-1} a'_t delta_t` (`a' = exp(delta A)`, twice that when signed), and per
program partial sums of `dB_t = sum_d g_t delta_t u_t`, `dC_t = sum_d dy_t h_t`, summed over the
channel tiles outside.

Layout: the state is `[N, BD]` (channels on the fast axis), so a token's `u_t, delta_t` are
`[1, BD]` rows and its `B_t, C_t` are `[N, 1]` columns of `[B, N, T]` arrays (transposed by the
wrapper), and no value is transposed inside the kernel. Grid `(B, D / BD)`, both axes parallel.
The column accesses follow the Triton (GPU) lowering; on CPU the kernel runs in interpret mode.
There is no TPU variant.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common as cm

F32 = jnp.float32


def _gate(delta, A, signed):
    e = jnp.exp(delta * A)
    return e, (2.0 * e - 1.0 if signed else e)


def _fwd_kernel(u_ref, dl_ref, b_ref, c_ref, a_ref, h0_ref, y_ref, *h_out, T, N, signed):
    # u_ref, dl_ref, y_ref: [T, BD]; b_ref, c_ref: [N, T]; a_ref, h0_ref: [N, BD];
    # h_out: () or ([T N, BD],)
    A = a_ref[...]

    def body(t, h):
        row, col = pl.ds(t, 1), pl.ds(t, 1)
        delta = dl_ref[row, :]
        _, a = _gate(delta, A, signed)
        h = a * h + b_ref[:, col] * (delta * u_ref[row, :])
        y_ref[row, :] = jnp.sum(c_ref[:, col] * h, axis=0, keepdims=True)
        if h_out:
            h_out[0][pl.ds(t * N, N), :] = h
        return h

    lax.fori_loop(0, T, body, h0_ref[...])


def _bwd_kernel(u_ref, dl_ref, b_ref, c_ref, a_ref, h0_ref, h_ref, dy_ref,
                du_ref, ddl_ref, db_ref, dc_ref, da_ref, dh0_ref, *, T, N, signed):
    # inputs as in the forward, h_ref: [T N, BD], dy_ref: [T, BD]; outputs du, ddl: [T, BD],
    # db, dc: [N, T] (this tile's partial sums over its channels), da, dh0: [N, BD]
    A = a_ref[...]
    h0 = h0_ref[...]
    two = 2.0 if signed else 1.0

    def body(i, carry):
        ag, h_t, dA = carry  # a_{t+1} g_{t+1}, h_t, running dA
        t = T - 1 - i
        row, col = pl.ds(t, 1), pl.ds(t, 1)
        delta, u, dy = dl_ref[row, :], u_ref[row, :], dy_ref[row, :]
        bc = b_ref[:, col]
        e, a = _gate(delta, A, signed)
        h_prev = h_ref[pl.ds(jnp.maximum(t - 1, 0) * N, N), :]
        h_prev = jnp.where(t == 0, h0, h_prev)
        g = dy * c_ref[:, col] + ag
        dc_ref[:, col] = jnp.sum(dy * h_t, axis=1, keepdims=True)
        gb = jnp.sum(g * bc, axis=0, keepdims=True)  # [1, BD]
        de = two * g * h_prev * e  # dL/d(delta A)
        ddl_ref[row, :] = jnp.sum(de * A, axis=0, keepdims=True) + u * gb
        du_ref[row, :] = delta * gb
        db_ref[:, col] = jnp.sum(g * (delta * u), axis=1, keepdims=True)
        return a * g, h_prev, dA + de * delta

    zero = jnp.zeros(h0.shape, F32)
    h_last = h_ref[pl.ds((T - 1) * N, N), :]
    ag, _, dA = lax.fori_loop(0, T, body, (zero, h_last, zero))
    da_ref[...] = dA
    dh0_ref[...] = ag


def _prepare(u, delta, A, Bm, Cm, h0, platform, block_d):
    """f32, padded and transposed operands: `(u, delta [B, T, Dp], B^T, C^T [B, Np, T],
    A^T [Np, Dp], h0^T [B, Np, Dp])` and the tile."""
    B, T, D = u.shape
    N = A.shape[1]
    bd = block_d or (64 if platform == "gpu" else D)
    Dp, Np = cm.round_up(D, bd), max(1, 1 << (N - 1).bit_length())
    f = lambda x: x.astype(F32)
    u_p, dl_p = (cm.pad_axis(f(x), 2, Dp) for x in (u, delta))
    bt, ct = (cm.pad_axis(jnp.swapaxes(f(x), 1, 2), 1, Np) for x in (Bm, Cm))
    at = cm.pad_axis(cm.pad_axis(f(A).T, 0, Np), 1, Dp)
    h0t = cm.pad_axis(cm.pad_axis(jnp.swapaxes(f(h0), 1, 2), 1, Np), 2, Dp)
    return (u_p, dl_p, bt, ct, at, h0t), bd, Dp, Np


def _specs(B, T, Dp, Np, bd):
    seq = cm.block_spec((B, T, Dp), (None, T, bd), lambda i, j: (i, 0, j))
    cols = cm.block_spec((B, Np, T), (None, Np, T), lambda i, j: (i, 0, 0))
    a = cm.block_spec((Np, Dp), (Np, bd), lambda i, j: (0, j))
    st = cm.block_spec((B, Np, Dp), (None, Np, bd), lambda i, j: (i, 0, j))
    hs = cm.block_spec((B, T * Np, Dp), (None, T * Np, bd), lambda i, j: (i, 0, j))
    return seq, cols, a, st, hs


def _call_fwd(u, delta, A, Bm, Cm, h0, signed, keep_h, interpret, platform, block_d, num_warps):
    B, T, D = u.shape
    ops, bd, Dp, Np = _prepare(u, delta, A, Bm, Cm, h0, platform, block_d)
    seq, cols, a, st, hs = _specs(B, T, Dp, Np, bd)
    out_specs = [seq] + ([hs] if keep_h else [])
    out_shape = [jax.ShapeDtypeStruct((B, T, Dp), F32)]
    if keep_h:
        out_shape.append(jax.ShapeDtypeStruct((B, T * Np, Dp), F32))
    outs = cm.pallas_call(
        platform,
        functools.partial(_fwd_kernel, T=T, N=Np, signed=signed),
        grid=(B, Dp // bd),
        in_specs=[seq, seq, cols, cols, a, st],
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 2, num_warps=num_warps, num_stages=2),
        name="lrnn_selective_scan_fwd",
    )(*ops)
    y = outs[0][:, :, :D]
    return (y, outs[1]) if keep_h else (y, None)


def _call_bwd(u, delta, A, Bm, Cm, h0, h, dy, signed, interpret, platform, block_d, num_warps):
    B, T, D = u.shape
    N = A.shape[1]
    ops, bd, Dp, Np = _prepare(u, delta, A, Bm, Cm, h0, platform, block_d)
    nj = Dp // bd
    seq, cols, a, st, hs = _specs(B, T, Dp, Np, bd)
    part = cm.block_spec((B, nj, Np, T), (None, None, Np, T), lambda i, j: (i, j, 0, 0))
    dy_p = cm.pad_axis(dy.astype(F32), 2, Dp)
    du, ddl, db, dc, da, dh0 = cm.pallas_call(
        platform,
        functools.partial(_bwd_kernel, T=T, N=Np, signed=signed),
        grid=(B, nj),
        in_specs=[seq, seq, cols, cols, a, st, hs, seq],
        out_specs=[seq, seq, part, part, st, st],
        out_shape=[
            jax.ShapeDtypeStruct((B, T, Dp), F32),
            jax.ShapeDtypeStruct((B, T, Dp), F32),
            jax.ShapeDtypeStruct((B, nj, Np, T), F32),
            jax.ShapeDtypeStruct((B, nj, Np, T), F32),
            jax.ShapeDtypeStruct((B, Np, Dp), F32),
            jax.ShapeDtypeStruct((B, Np, Dp), F32),
        ],
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 2, num_warps=num_warps, num_stages=2),
        name="lrnn_selective_scan_bwd",
    )(*ops, h, dy_p)
    dB = jnp.swapaxes(db.sum(1)[:, :N], 1, 2)
    dC = jnp.swapaxes(dc.sum(1)[:, :N], 1, 2)
    dA = da.sum(0)[:N, :D].T
    dh0 = jnp.swapaxes(dh0[:, :N, :D], 1, 2)
    return du[:, :, :D], ddl[:, :, :D], dA, dB, dC, dh0


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _ss(u, delta, A, Bm, Cm, h0, signed, interpret, platform, block_d, num_warps):
    return _call_fwd(u, delta, A, Bm, Cm, h0, signed, False, interpret, platform, block_d,
                     num_warps)[0]


def _ss_fwd(u, delta, A, Bm, Cm, h0, signed, interpret, platform, block_d, num_warps):
    y, h = _call_fwd(u, delta, A, Bm, Cm, h0, signed, True, interpret, platform, block_d,
                     num_warps)
    return y, (u, delta, A, Bm, Cm, h0, h)


def _ss_bwd(signed, interpret, platform, block_d, num_warps, res, dy):
    u, delta, A, Bm, Cm, h0, h = res
    grads = _call_bwd(u, delta, A, Bm, Cm, h0, h, dy, signed, interpret, platform, block_d,
                      num_warps)
    return tuple(g.astype(x.dtype) for g, x in zip(grads, (u, delta, A, Bm, Cm, h0)))


_ss.defvjp(_ss_fwd, _ss_bwd)


def selective_scan(u, delta, A, Bm, Cm, h0=None, *, signed=False, interpret=None, block_d=None,
                   num_warps=None, _target=None):
    """Mamba's selective scan, fused (Pallas): `y [B, T, D]` (f32).

    Args:
      u: `[B, T, D]` the inputs.
      delta: `[B, T, D]` the step sizes (after the softplus).
      A: `[D, N]` the continuous-time diagonal (negative for decays in [0, 1]).
      Bm: `[B, T, N]` input projections.
      Cm: `[B, T, N]` output projections.
      h0: `[B, D, N]` the state before the first token, or None (zeros).
      signed: eigenvalues `2 exp(delta A) - 1` in [-1, 1] instead of `exp(delta A)`.
      interpret: run in interpret mode; None means "on CPU".
      block_d: channels per program, a power of two (default 64 on GPU, all of D elsewhere).
      num_warps: Triton warps per program (GPU; default 4).
    """
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be [B, T, D]; got {u.shape}, {delta.shape}")
    B, T, D = u.shape
    if A.ndim != 2 or A.shape[0] != D:
        raise ValueError(f"A must be [D, N] with D = {D}; got {A.shape}")
    N = A.shape[1]
    for name, x in (("Bm", Bm), ("Cm", Cm)):
        if x.shape != (B, T, N):
            raise ValueError(f"{name} must be [B, T, N] = {(B, T, N)}; got {x.shape}")
    if h0 is None:
        h0 = jnp.zeros((B, D, N), F32)
    if h0.shape != (B, D, N):
        raise ValueError(f"h0 must be [B, D, N] = {(B, D, N)}; got {h0.shape}")
    interpret = cm.resolve_interpret(interpret)
    platform = cm.target_platform(interpret, _target)
    if platform == "tpu":
        raise NotImplementedError("pallas_kernels.selective_scan has a GPU (Triton) lowering "
                                  "only; on TPU use lrnn.ops.selective_scan's XLA forms")
    if block_d is not None and (block_d < 1 or block_d & (block_d - 1)):
        raise ValueError(f"block_d must be a power of two (Triton's block shapes); got {block_d}")
    if num_warps is None:
        num_warps = 4
    return _ss(u, delta, A, Bm, Cm, h0, bool(signed), interpret, platform, block_d, num_warps)
