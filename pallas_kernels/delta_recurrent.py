"""DeltaNet / DeltaProduct token by token in one fused Pallas kernel (fla's "fused recurrent"
organisation), with its backward: the fast form for short sequences.

Each program owns one (batch row, head, value tile) and keeps its `[dk, BV]` slice of the state
in registers while it walks the `L = T n_h` Householder sub-steps (the gate, if any, before a
token's first sub-step; the output after its last):

    w = k^T S,   S <- S + k (beta (v - w)),   o_t = q_t^T S

The chunkwise WY kernels (`delta_product.py`, `delta_chunk.py`) pay for a chunk's triangular
inverse and several passes over chunk-sized intermediates; for a sequence of a few dozen tokens
that is most of the work, which this kernel does not do. The forward used under differentiation
also writes every sub-step's state (`[L dk, BV]` per program) for the backward, which walks the
sub-steps in reverse with `dS` in registers:

    dS += q_t do_t^T (after a token's last sub-step),   r = v - w,   u = beta r
    dk = dS u + S_in dw,   du = dS^T k,   dbeta = <du, r>,   dv = beta du,   dw = -beta du,
    dS_in = dS + k dw   (and dgate = <dS_in, S_prev>, dS = gate dS_in at a token's start)

The state's value columns are independent, so value tiles are independent programs; the
key-side gradients (dq, dk, dbeta, dgate) are summed over the tiles outside. Layout: keys and
queries arrive transposed (`[dk, L]`, a sub-step's key is a column), values as rows; no value
is transposed inside the kernel. Grid `(B, H, dv / BV)`, all parallel. GPU (Triton) lowering;
on CPU it runs in interpret mode. There is no TPU variant. Token by token, a non-finite input
reaches only later outputs, exactly as in the sequential loop (tests/test_nonfinite_delta.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common as cm

F32 = jnp.float32


def _fwd_kernel(q_ref, k_ref, v_ref, b_ref, g_ref, s0_ref, o_ref, sT_ref, *s_out, T, n_h, dk,
                gated):
    # q_ref [dk, T]; k_ref [dk, L]; v_ref [L, BV]; b_ref [1, L]; g_ref [1, T] (or unused);
    # s0_ref, sT_ref [dk, BV]; o_ref [T, BV]; s_out: () or ([L dk, BV],)
    def token(t, S):
        if gated:
            S = g_ref[:, pl.ds(t, 1)] * S
        for i in range(n_h):
            sub = t * n_h + i
            kc = k_ref[:, pl.ds(sub, 1)]
            w = jnp.sum(kc * S, axis=0, keepdims=True)
            S = S + kc * (b_ref[:, pl.ds(sub, 1)] * (v_ref[pl.ds(sub, 1), :] - w))
            if s_out:
                s_out[0][pl.ds(sub * dk, dk), :] = S
        o_ref[pl.ds(t, 1), :] = jnp.sum(q_ref[:, pl.ds(t, 1)] * S, axis=0, keepdims=True)
        return S

    sT_ref[...] = lax.fori_loop(0, T, token, s0_ref[...])


def _bwd_kernel(q_ref, k_ref, v_ref, b_ref, g_ref, s0_ref, s_ref, do_ref, dsT_ref,
                dq_ref, dk_ref, dv_ref, db_ref, dg_ref, ds0_ref, *, T, n_h, dk, gated):
    # inputs as in the forward plus s_ref [L dk, BV] (every sub-step's state), do_ref [T, BV],
    # dsT_ref [dk, BV]; outputs dq [dk, T], dk [dk, L], db [1, L], dg [1, T] (this tile's
    # partial sums), dv [L, BV], ds0 [dk, BV]
    s0 = s0_ref[...]

    def state(sub):  # the state after sub-step `sub` (sub = -1: the initial state)
        prev = s_ref[pl.ds(jnp.maximum(sub, 0) * dk, dk), :]
        return jnp.where(sub < 0, s0, prev)

    def token(i, dS):
        t = T - 1 - i
        tc = pl.ds(t, 1)
        do = do_ref[tc, :]
        s_last = state(t * n_h + n_h - 1)
        dq_ref[:, tc] = jnp.sum(s_last * do, axis=1, keepdims=True)
        dS = dS + q_ref[:, tc] * do
        for j in range(n_h - 1, -1, -1):
            sub = t * n_h + j
            sc = pl.ds(sub, 1)
            s_prev = state(sub - 1)
            g = g_ref[:, tc] if (gated and j == 0) else None
            s_in = g * s_prev if g is not None else s_prev
            kc, beta = k_ref[:, sc], b_ref[:, sc]
            r = v_ref[sc, :] - jnp.sum(kc * s_in, axis=0, keepdims=True)
            du = jnp.sum(dS * kc, axis=0, keepdims=True)
            dw = -beta * du
            dk_ref[:, sc] = (jnp.sum(dS * (beta * r), axis=1, keepdims=True)
                             + jnp.sum(s_in * dw, axis=1, keepdims=True))
            db_ref[:, sc] = jnp.sum(du * r, axis=1, keepdims=True)
            dv_ref[sc, :] = beta * du
            dS = dS + kc * dw
            if g is not None:
                dg_ref[:, tc] = jnp.sum(jnp.sum(dS * s_prev, axis=1, keepdims=True), axis=0,
                                        keepdims=True)
                dS = g * dS
        return dS

    ds0_ref[...] = lax.fori_loop(0, T, token, dsT_ref[...])


def _pow2(n: int) -> int:
    return max(1, 1 << (n - 1).bit_length())


def _prepare(q, k, v, beta, gate, S0, scale, bv):
    """f32 operands in the kernel layouts, keys and values padded to powers of two."""
    B, T, H, n_h, dk = k.shape
    dv = v.shape[-1]
    L = T * n_h
    dkp, dvp = _pow2(dk), cm.round_up(_pow2(dv), bv)
    f = lambda x: x.astype(F32)
    qt = cm.pad_axis(jnp.transpose(f(q) * scale, (0, 2, 3, 1)), 2, dkp)  # [B, H, dk, T]
    kt = cm.pad_axis(jnp.transpose(f(k), (0, 2, 4, 1, 3)).reshape(B, H, dk, L), 2, dkp)
    vv = cm.pad_axis(jnp.transpose(f(v), (0, 2, 1, 3, 4)).reshape(B, H, L, dv), 3, dvp)
    bb = jnp.transpose(f(beta), (0, 2, 1, 3)).reshape(B, H, 1, L)
    gg = (jnp.ones((B, H, 1, T), F32) if gate is None
          else jnp.transpose(f(gate), (0, 2, 1))[:, :, None, :])
    s0 = cm.pad_axis(cm.pad_axis(f(S0), 2, dkp), 3, dvp)
    return (qt, kt, vv, bb, gg, s0), dkp, dvp


def _specs(B, H, T, L, dkp, dvp, bv):
    whole = lambda rows, cols: cm.block_spec((B, H, rows, cols), (None, None, rows, cols),
                                             lambda b, h, j: (b, h, 0, 0))
    tile = lambda rows: cm.block_spec((B, H, rows, dvp), (None, None, rows, bv),
                                      lambda b, h, j: (b, h, 0, j))
    return whole, tile


def _call_fwd(q, k, v, beta, gate, S0, scale, keep, interpret, platform, bv, num_warps):
    B, T, H, n_h, dk = k.shape
    dv, L = v.shape[-1], T * n_h
    ops, dkp, dvp = _prepare(q, k, v, beta, gate, S0, scale, bv)
    whole, tile = _specs(B, H, T, L, dkp, dvp, bv)
    out_specs = [tile(T), tile(dkp)] + ([tile(L * dkp)] if keep else [])
    out_shape = [jax.ShapeDtypeStruct((B, H, T, dvp), F32),
                 jax.ShapeDtypeStruct((B, H, dkp, dvp), F32)]
    if keep:
        out_shape.append(jax.ShapeDtypeStruct((B, H, L * dkp, dvp), F32))
    outs = cm.pallas_call(
        platform,
        functools.partial(_fwd_kernel, T=T, n_h=n_h, dk=dkp, gated=gate is not None),
        grid=(B, H, dvp // bv),
        in_specs=[whole(dkp, T), whole(dkp, L), tile(L), whole(1, L), whole(1, T), tile(dkp)],
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=2),
        name="lrnn_delta_recurrent_fwd",
    )(*ops)
    o = jnp.swapaxes(outs[0][..., :dv], 1, 2)  # [B, T, H, dv]
    return o, outs[1][:, :, :dk, :dv], (outs[2] if keep else None)


def _call_bwd(q, k, v, beta, gate, S0, scale, states, do, dsT, interpret, platform, bv,
              num_warps):
    B, T, H, n_h, dk = k.shape
    dv, L = v.shape[-1], T * n_h
    ops, dkp, dvp = _prepare(q, k, v, beta, gate, S0, scale, bv)
    nv = dvp // bv
    whole, tile = _specs(B, H, T, L, dkp, dvp, bv)
    part = lambda rows, cols: cm.block_spec((B, H, nv * rows, cols), (None, None, rows, cols),
                                            lambda b, h, j: (b, h, j, 0))
    do_p = cm.pad_axis(jnp.swapaxes(do.astype(F32), 1, 2), 3, dvp)  # [B, H, T, dvp]
    dsT_p = cm.pad_axis(cm.pad_axis(dsT.astype(F32), 2, dkp), 3, dvp)
    dq, dk_, dv_, db, dg, ds0 = cm.pallas_call(
        platform,
        functools.partial(_bwd_kernel, T=T, n_h=n_h, dk=dkp, gated=gate is not None),
        grid=(B, H, nv),
        in_specs=[whole(dkp, T), whole(dkp, L), tile(L), whole(1, L), whole(1, T), tile(dkp),
                  tile(L * dkp), tile(T), tile(dkp)],
        out_specs=[part(dkp, T), part(dkp, L), tile(L), part(1, L), part(1, T), tile(dkp)],
        out_shape=[
            jax.ShapeDtypeStruct((B, H, nv * dkp, T), F32),
            jax.ShapeDtypeStruct((B, H, nv * dkp, L), F32),
            jax.ShapeDtypeStruct((B, H, L, dvp), F32),
            jax.ShapeDtypeStruct((B, H, nv, L), F32),
            jax.ShapeDtypeStruct((B, H, nv, T), F32),
            jax.ShapeDtypeStruct((B, H, dkp, dvp), F32),
        ],
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=2),
        name="lrnn_delta_recurrent_bwd",
    )(*ops, states, do_p, dsT_p)
    tiles = lambda x, rows: x.reshape(B, H, nv, rows, -1).sum(2)
    dq = jnp.transpose(tiles(dq, dkp)[:, :, :dk], (0, 3, 1, 2)) * scale  # [B, T, H, dk]
    dk_ = jnp.transpose(tiles(dk_, dkp)[:, :, :dk].reshape(B, H, dk, T, n_h), (0, 3, 1, 4, 2))
    dv_ = jnp.transpose(dv_[..., :dv].reshape(B, H, T, n_h, dv), (0, 2, 1, 3, 4))
    db = jnp.transpose(db.sum(2).reshape(B, H, T, n_h), (0, 2, 1, 3))
    dg = None if gate is None else jnp.swapaxes(dg.sum(2), 1, 2)
    return dq, dk_, dv_, db, dg, ds0[:, :, :dk, :dv]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _dr(q, k, v, beta, gate, S0, scale, interpret, platform, bv, num_warps):
    o, sT, _ = _call_fwd(q, k, v, beta, gate, S0, scale, False, interpret, platform, bv,
                         num_warps)
    return o, sT


def _dr_fwd(q, k, v, beta, gate, S0, scale, interpret, platform, bv, num_warps):
    o, sT, states = _call_fwd(q, k, v, beta, gate, S0, scale, True, interpret, platform, bv,
                              num_warps)
    return (o, sT), (q, k, v, beta, gate, S0, states)


def _dr_bwd(scale, interpret, platform, bv, num_warps, res, cts):
    q, k, v, beta, gate, S0, states = res
    do, dsT = cts
    dq, dk, dv, db, dg, ds0 = _call_bwd(q, k, v, beta, gate, S0, scale, states, do, dsT,
                                        interpret, platform, bv, num_warps)
    cast = lambda g, x: None if x is None else g.astype(x.dtype)
    return (cast(dq, q), cast(dk, k), cast(dv, v), cast(db, beta), cast(dg, gate),
            cast(ds0, S0))


_dr.defvjp(_dr_fwd, _dr_bwd)


def check_shapes(q, k, v, beta, gate, initial_state):
    """`(B, T, H, n_h, dk, dv)` of DeltaProduct's inputs (fla's layout, `k`, `v` with the
    `n_h` axis); ValueError naming the first argument of the wrong shape."""
    if q.ndim != 4:
        raise ValueError(f"q must be [B, T, H, dk]; got {q.shape}")
    B, T, H, dk = q.shape
    if k.ndim != 5 or k.shape[:3] != (B, T, H) or k.shape[-1] != dk:
        raise ValueError(f"k must be [B, T, H, n_h, dk] = [{B}, {T}, {H}, n_h, {dk}]; "
                         f"got {k.shape}")
    n_h = k.shape[3]
    if v.ndim != 5 or v.shape[:4] != (B, T, H, n_h):
        raise ValueError(f"v must be [B, T, H, n_h, dv] = [{B}, {T}, {H}, {n_h}, dv]; "
                         f"got {v.shape}")
    dv = v.shape[-1]
    if beta.shape != (B, T, H, n_h):
        raise ValueError(f"beta must be [B, T, H, n_h] = {(B, T, H, n_h)}; got {beta.shape}")
    if gate is not None and gate.shape != (B, T, H):
        raise ValueError(f"gate must be [B, T, H] = {(B, T, H)} or None; got {gate.shape}")
    if initial_state is not None and initial_state.shape != (B, H, dk, dv):
        raise ValueError(f"initial_state must be [B, H, dk, dv] = {(B, H, dk, dv)}; "
                         f"got {initial_state.shape}")
    return B, T, H, n_h, dk, dv


def delta_recurrent(q, k, v, beta, *, gate=None, initial_state=None, scale=1.0,
                    interpret=None, block_v=None, num_warps=None, _target=None):
    """DeltaProduct (n_h Householder steps per token) token by token, one fused kernel each way.

    Args:
      q: `[B, T, H, dk]` queries.
      k: `[B, T, H, n_h, dk]` keys.
      v: `[B, T, H, n_h, dv]` values.
      beta: `[B, T, H, n_h]` step sizes (in [0, 2] for eigenvalues in [-1, 1]).
      gate: `[B, T, H]` forget gate applied before a token's steps, or None.
      initial_state: `[B, H, dk, dv]` or None (zeros).
      scale: number multiplying q (python or NumPy, not traced).
      interpret: interpret mode; None means "on CPU".
      block_v: value columns per program (a power of two; default the whole padded dv up to
        64).
      num_warps: Triton warps per program (GPU; default 4).

    Returns:
      o: `[B, T, H, dv]` in q's dtype; final_state: `[B, H, dk, dv]` f32.
    """
    B, T, H, n_h, dk, dv = check_shapes(q, k, v, beta, gate, initial_state)
    if initial_state is None:
        initial_state = jnp.zeros((B, H, dk, dv), F32)
    try:  # a python or NumPy number (it is baked into the kernel), not a traced value
        scale = float(scale)
    except TypeError as e:
        raise TypeError(f"scale must be a python float (not traced); got {scale!r}") from e
    interpret = cm.resolve_interpret(interpret)
    platform = cm.target_platform(interpret, _target)
    if platform == "tpu":
        raise NotImplementedError("pallas_kernels.delta_recurrent has a GPU (Triton) lowering "
                                  "only; on TPU use delta_product (chunkwise)")
    bv = block_v if block_v is not None else min(_pow2(dv), 64)
    if bv < 1 or bv & (bv - 1):
        raise ValueError(f"block_v must be a power of two; got {bv}")
    o, sT = _dr(q, k, v, beta, gate, initial_state, float(scale), interpret, platform, bv,
                num_warps or 4)
    return o.astype(q.dtype), sT
