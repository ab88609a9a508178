"""DeltaProduct / (Gated) DeltaNet as a chunkwise Pallas kernel (WY / UT form), with backward.

Per token: `S <- gate * S`, then n_h Householder steps
`S <- (I - beta_j k_j k_j^T) S + beta_j k_j v_j^T`; `o_t = S_t^T (scale q_t)` after the last.
The n_h sub-steps run as one interleaved delta-rule sequence of length `T n_h` (the gate sits on
the first sub-step of each token, the query on the last), so one kernel serves n_h >= 1.

Chunk form (chunk of C sub-steps, start state S0, within-chunk cumulative gates G_t, with
`Gam[t, s] = G_t / G_s` for s <= t and `gam_t = G_C / G_t`):
  A = strict_lower(beta_t (k_t . k_s) Gam[t, s]),  Tm = (I + A)^{-1} diag(beta)
  W = Tm (G k),  U = Tm V,  Vn = U - W S0
  O = (G q) S0 + (incl_lower(q k^T) * Gam) Vn,     S_C = G_C S0 + (gam k)^T Vn
Gates enter as within-chunk cumulative sums of log|g| with the sign tracked separately, so every
exponent is <= 0: gates near 0, near 1 and negative are all stable. `(I + A)^{-1}` is exact
forward substitution (stable for beta up to 2), organised in 16-row blocks so that it runs as
matmuls (`_common.unit_lower_inverse_blocked`).

Forward kernel: grid `(B, H, dv / BV)`, all three axes parallel; each program loops over the
chunks of one (batch, head, value tile) with the f32 state `[dk, BV]` in registers and stores
the state at every chunk start (`[NC, dk, BV]`, f32) for the backward.
Backward kernel: same grid (parallel), loops over chunks in reverse with the f32 adjoint state
`dS`, reloads the stored chunk state and recomputes everything of the chunk (no per-token
`dk x dk` matrices). Key-side gradients (dq, dk, dbeta) are partial sums over value tiles,
added up in the wrapper. The gate gradient needs no kernel: with `L` the cumulative log|gate|,
`dL_t = q_t . dq_t - v_t . dv_t` and the final state adds `sum(S_T * dS_T)`, so
`d log|g_u| = sum_{t >= u} (q_t . dq_t - v_t . dv_t) + sum(S_T * dS_T)` (a reverse cumsum).

Non-finite inputs: these chunk kernels (and `delta_chunk`'s) are not causal yet. A NaN or inf
in k, v, beta or the gate at token t also reaches the outputs of the earlier tokens of its
chunk (`0 * NaN` in the triangular products); a bad q stays in its token. The token-by-token
`delta_recurrent` and the XLA forms of `lrnn.ops` are causal (tests/test_nonfinite_delta.py;
the cost of the fixes tried: benchmarks/RESULTS.md, issue #21).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common as cm
from pallas_kernels.delta_recurrent import check_shapes, delta_recurrent

F32 = jnp.float32


def _chunk_common(c, C, q_ref, k_ref, v_ref, b_ref, lg_ref, sg_ref, scale, gated, dt,
                  m_ref=None):
    """Loads chunk c and builds what both directions need (all f32 except the inputs).

    `m_ref` (`[L, C]`), if given, holds `(I + A)^{-1}` of every chunk, precomputed by the
    chunk-parallel `_inverse_kernel`; otherwise the inverse is computed here.
    """
    sl = pl.ds(c * C, C)
    q = q_ref[sl, :].astype(F32) * scale
    k = k_ref[sl, :]
    v = v_ref[sl, :]
    beta = b_ref[sl, :].astype(F32)  # [C, 1]
    r, cc = cm.iotas(C)
    kk = cm.mm_nt(k, k, dt)  # [C, C]
    if gated:
        lg = lg_ref[sl, :]  # [C, 1] within-chunk cumulative log|g|
        sg = sg_ref[sl, :]  # [C, 1] within-chunk cumulative sign
        lg_r, sg_r = cm.col_to_row(lg), cm.col_to_row(sg)
        ss = sg * sg_r
        gam = jnp.where(r >= cc, ss * jnp.exp(jnp.minimum(lg - lg_r, 0.0)), 0.0)
        gam_t = jnp.where(r <= cc, ss * jnp.exp(jnp.minimum(lg_r - lg, 0.0)), 0.0)
        last = pl.ds(c * C + C - 1, 1)
        lg_last, sg_last = lg_ref[last, :], sg_ref[last, :]  # [1, 1]
        g_col = sg * jnp.exp(lg)  # G_t  [C, 1]
        g_end = sg_last * jnp.exp(lg_last)  # G_C  [1, 1]
        g_to_end = sg_last * sg * jnp.exp(lg_last - lg)  # G_C / G_t  [C, 1]
    else:
        gam = jnp.where(r >= cc, 1.0, 0.0).astype(F32)
        gam_t = jnp.where(r <= cc, 1.0, 0.0).astype(F32)
        g_col = g_end = g_to_end = None
    beta_r = cm.col_to_row(beta)
    if m_ref is None:
        a = jnp.where(r > cc, beta * kk * gam, 0.0)
        minv = _unit_lower_inverse(a, lambda: jnp.where(r < cc, beta_r * kk * gam_t, 0.0))
    else:
        minv = m_ref[sl, :]
    tm = minv * beta_r  # (I + A)^{-1} diag(beta)
    kf = k.astype(F32)
    gk = kf if g_col is None else g_col * kf
    w = cm.mm(tm, gk, dt)  # [C, dk]
    u = cm.mm(tm, v, dt)  # [C, BV]
    p = jnp.where(r >= cc, cm.mm_nt(q, k, dt) * gam, 0.0)  # [C, C]
    return dict(
        q=q, k=kf, v=v, beta=beta, beta_r=beta_r, kk=kk, gam=gam, minv=minv, tm=tm, w=w, u=u,
        p=p, g_col=g_col, g_end=g_end, g_to_end=g_to_end, gk=gk, r=r, cc=cc,
    )


def chunk_inverse(k, beta, lg, sg, C, gated):
    """`(I + A)^{-1}` of one chunk, A = strict_lower(beta_t (k_t . k_s) Gam[t, s]).

    k `[C, dk]` (input dtype); beta, lg, sg `[C, 1]` f32 (lg, sg unused if not gated).
    """
    r, cc = cm.iotas(C)
    kk = cm.mm_nt(k, k, k.dtype)
    if gated:
        lg_r, sg_r = cm.col_to_row(lg), cm.col_to_row(sg)
        gam = sg * sg_r * jnp.exp(jnp.minimum(lg - lg_r, 0.0))
        gam_t = sg * sg_r * jnp.exp(jnp.minimum(lg_r - lg, 0.0))
    else:
        gam = gam_t = jnp.ones((C, C), F32)
    a = jnp.where(r > cc, beta * kk * gam, 0.0)
    return _unit_lower_inverse(a, lambda: jnp.where(r < cc, cm.col_to_row(beta) * kk * gam_t,
                                                    0.0))


def _unit_lower_inverse(a, a_t):
    """`(I + A)^{-1}`: block substitution by matmuls when C is a multiple of 16 above 16
    (`cm.unit_lower_inverse_blocked`), else row by row (`a_t()` gives `A^T`)."""
    C = a.shape[0]
    if C % 16 == 0 and C > 16:
        return cm.unit_lower_inverse_blocked(a, 16)
    return cm.unit_lower_inverse(a, a_t())


def _inverse_kernel(k_ref, b_ref, lg_ref, sg_ref, m_ref, *, C, gated):
    """One chunk: `(I + A)^{-1}` (see `chunk_inverse`).

    Refs: k `[C, dk]`; b, lg, sg `[C, 1]`; m `[C, C]` f32. Grid (B, H, NC): all parallel.
    """
    m_ref[...] = chunk_inverse(k_ref[...], b_ref[...].astype(F32), lg_ref[...], sg_ref[...],
                               C, gated)


def _fwd_kernel(*refs, C, NC, dk, scale, gated, pre):
    # q_ref, k_ref: [L, dk]; v_ref, o_ref: [L, BV]; b/lg/sg_ref: [L, 1]; m_ref: [L, C] (only
    # with pre); h0_ref, ht_ref: [dk, BV] f32; hs_ref: [NC * dk, BV] f32 (chunk-start states).
    if pre:
        q_ref, k_ref, v_ref, b_ref, lg_ref, sg_ref, m_ref, h0_ref, o_ref, hs_ref, ht_ref = refs
    else:
        q_ref, k_ref, v_ref, b_ref, lg_ref, sg_ref, h0_ref, o_ref, hs_ref, ht_ref = refs
        m_ref = None
    dt = q_ref.dtype

    def body(c, s):
        hs_ref[pl.ds(c * dk, dk), :] = s
        x = _chunk_common(c, C, q_ref, k_ref, v_ref, b_ref, lg_ref, sg_ref, scale, gated, dt,
                          m_ref)
        vn = x["u"] - cm.mm(x["w"], s, dt)
        gq = x["q"] if x["g_col"] is None else x["g_col"] * x["q"]
        o = cm.mm(gq, s, dt) + cm.mm(x["p"], vn, dt)
        o_ref[pl.ds(c * C, C), :] = o.astype(o_ref.dtype)
        kend = x["k"] if x["g_to_end"] is None else x["g_to_end"] * x["k"]
        s_dec = s if x["g_end"] is None else x["g_end"] * s
        return s_dec + cm.mm_tn(kend, vn, dt)

    ht_ref[...] = lax.fori_loop(0, NC, body, h0_ref[...].astype(F32))


def _bwd_kernel(*refs, C, NC, dk, scale, gated, pre):
    if pre:
        (q_ref, k_ref, v_ref, b_ref, lg_ref, sg_ref, m_ref, hs_ref, do_ref, dht_ref,
         dq_ref, dk_ref, dv_ref, db_ref, dh0_ref) = refs
    else:
        (q_ref, k_ref, v_ref, b_ref, lg_ref, sg_ref, hs_ref, do_ref, dht_ref,
         dq_ref, dk_ref, dv_ref, db_ref, dh0_ref) = refs
        m_ref = None
    dt = q_ref.dtype

    def body(i, ds):
        c = NC - 1 - i
        sl = pl.ds(c * C, C)
        s0 = hs_ref[pl.ds(c * dk, dk), :]
        do = do_ref[sl, :].astype(F32)
        x = _chunk_common(c, C, q_ref, k_ref, v_ref, b_ref, lg_ref, sg_ref, scale, gated, dt,
                          m_ref)
        r, cc = x["r"], x["cc"]
        q, k, w, tm, minv = x["q"], x["k"], x["w"], x["tm"], x["minv"]
        vn = x["u"] - cm.mm(x["w"], s0, dt)
        gq = q if x["g_col"] is None else x["g_col"] * q
        kend = k if x["g_to_end"] is None else x["g_to_end"] * k
        # output and end-state paths
        dvn = cm.mm_tn(x["p"], do, dt) + cm.mm(kend, ds, dt)  # [C, BV]
        dpg = jnp.where(r >= cc, cm.mm_nt(do, vn, dt), 0.0) * x["gam"]  # [C, C]
        dq = cm.mm_nt(do, s0, dt)
        dq = (dq if x["g_col"] is None else x["g_col"] * dq) + cm.mm(dpg, k, dt)
        kv = cm.mm_nt(vn, ds, dt)
        dkk = cm.mm_tn(dpg, q, dt) + (kv if x["g_to_end"] is None else x["g_to_end"] * kv)
        # W = Tm (G k), U = Tm V, Vn = U - W S0
        dw = -cm.mm_nt(dvn, s0, dt)  # [C, dk]
        dtm = cm.mm_nt(dw, x["gk"], dt) + cm.mm_nt(dvn, x["v"], dt)  # [C, C]
        tdw = cm.mm_tn(tm, dw, dt)
        dkk = dkk + (tdw if x["g_col"] is None else x["g_col"] * tdw)
        dv = cm.mm_tn(tm, dvn, dt)
        # Tm = Minv diag(beta), Minv = (I + A)^{-1}
        db_r = jnp.sum(dtm * minv, axis=0, keepdims=True)  # [1, C]
        dminv = dtm * x["beta_r"]
        dm = -cm.mm_tn(minv, cm.mm_nt(dminv, minv))  # -Minv^T dMinv Minv^T (f32)
        da = jnp.where(r > cc, dm, 0.0)
        db_c = jnp.sum(da * x["kk"] * x["gam"], axis=1, keepdims=True)  # [C, 1]
        dkk_mat = da * x["beta"] * x["gam"]
        dkk = dkk + cm.mm(dkk_mat, k, dt) + cm.mm_tn(dkk_mat, k, dt)
        dq_ref[sl, :] = dq * scale
        dk_ref[sl, :] = dkk
        dv_ref[sl, :] = dv.astype(dv_ref.dtype)
        db_ref[sl, :] = db_c + cm.row_to_col(db_r)
        ds_dec = ds if x["g_end"] is None else x["g_end"] * ds
        return ds_dec + cm.mm_tn(gq, do, dt) - cm.mm_tn(w, dvn, dt)

    dh0_ref[...] = lax.fori_loop(0, NC, body, dht_ref[...].astype(F32))


def _specs(B, H, Lp, dk, dv, bv, NC):
    """Block specs of both kernels; grid (B, H, dv / bv), all parallel."""
    seq_k = cm.block_spec((B, H, Lp, dk), (None, None, Lp, dk), lambda b, h, j: (b, h, 0, 0))
    seq_v = cm.block_spec((B, H, Lp, dv), (None, None, Lp, bv), lambda b, h, j: (b, h, 0, j))
    seq_1 = cm.block_spec((B, H, Lp, 1), (None, None, Lp, 1), lambda b, h, j: (b, h, 0, 0))
    state = cm.block_spec((B, H, dk, dv), (None, None, dk, bv), lambda b, h, j: (b, h, 0, j))
    states = cm.block_spec((B, H, NC * dk, dv), (None, None, NC * dk, bv),
                           lambda b, h, j: (b, h, 0, j))
    nv = dv // bv
    part_k = cm.block_spec((nv, B, H, Lp, dk), (None, None, None, Lp, dk),
                           lambda b, h, j: (j, b, h, 0, 0))
    part_1 = cm.block_spec((nv, B, H, Lp, 1), (None, None, None, Lp, 1),
                           lambda b, h, j: (j, b, h, 0, 0))
    return seq_k, seq_v, seq_1, state, states, part_k, part_1


def _kernel_inverse(ki, bi, lgc, sgc, cfg):
    """`(I + A)^{-1}` of every chunk, `[B, H, Lp, C]` f32; grid (B, H, NC), all parallel."""
    C, _, gated, interpret, platform, _, num_warps, _ = cfg
    B, H, Lp, dk = ki.shape
    NC = Lp // C
    blk_k = cm.block_spec((B, H, Lp, dk), (None, None, C, dk), lambda b, h, c: (b, h, c, 0))
    blk_1 = cm.block_spec((B, H, Lp, 1), (None, None, C, 1), lambda b, h, c: (b, h, c, 0))
    blk_m = cm.block_spec((B, H, Lp, C), (None, None, C, C), lambda b, h, c: (b, h, c, 0))
    return cm.pallas_call(
        platform,
        functools.partial(_inverse_kernel, C=C, gated=gated),
        grid=(B, H, NC),  # all parallel
        in_specs=[blk_k, blk_1, blk_1, blk_1],
        out_specs=blk_m,
        out_shape=jax.ShapeDtypeStruct((B, H, Lp, C), F32),
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=1),
        name="lrnn_delta_product_inverse",
    )(ki, bi, lgc, sgc)


def _kernel_fwd(qi, ki, vi, bi, lgc, sgc, m, h0, cfg):
    C, scale, gated, interpret, platform, bv, num_warps, pre = cfg
    B, H, Lp, dk = ki.shape
    dv = vi.shape[-1]
    NC = Lp // C
    seq_k, seq_v, seq_1, state, states, _, _ = _specs(B, H, Lp, dk, dv, bv, NC)
    seq_m = [cm.block_spec((B, H, Lp, C), (None, None, Lp, C), lambda b, h, j: (b, h, 0, 0))]
    return cm.pallas_call(
        platform,
        functools.partial(_fwd_kernel, C=C, NC=NC, dk=dk, scale=scale, gated=gated, pre=pre),
        grid=(B, H, dv // bv),  # all parallel
        in_specs=[seq_k, seq_k, seq_v, seq_1, seq_1, seq_1] + (seq_m if pre else []) + [state],
        out_specs=[seq_v, states, state],
        out_shape=[
            jax.ShapeDtypeStruct((B, H, Lp, dv), qi.dtype),
            jax.ShapeDtypeStruct((B, H, NC * dk, dv), F32),
            jax.ShapeDtypeStruct((B, H, dk, dv), F32),
        ],
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=1),
        name="lrnn_delta_product_fwd",
    )(qi, ki, vi, bi, lgc, sgc, *([m] if pre else []), h0)


def _kernel_bwd(qi, ki, vi, bi, lgc, sgc, m, hs, do, dht, cfg):
    C, scale, gated, interpret, platform, bv, num_warps, pre = cfg
    B, H, Lp, dk = ki.shape
    dv = vi.shape[-1]
    NC = Lp // C
    nv = dv // bv
    seq_k, seq_v, seq_1, state, states, part_k, part_1 = _specs(B, H, Lp, dk, dv, bv, NC)
    seq_m = [cm.block_spec((B, H, Lp, C), (None, None, Lp, C), lambda b, h, j: (b, h, 0, 0))]
    dq, dk_, dv_, db, dh0 = cm.pallas_call(
        platform,
        functools.partial(_bwd_kernel, C=C, NC=NC, dk=dk, scale=scale, gated=gated, pre=pre),
        grid=(B, H, nv),  # all parallel
        in_specs=[seq_k, seq_k, seq_v, seq_1, seq_1, seq_1] + (seq_m if pre else [])
        + [states, seq_v, state],
        out_specs=[part_k, part_k, seq_v, part_1, state],
        out_shape=[
            jax.ShapeDtypeStruct((nv, B, H, Lp, dk), F32),
            jax.ShapeDtypeStruct((nv, B, H, Lp, dk), F32),
            jax.ShapeDtypeStruct((B, H, Lp, dv), F32),
            jax.ShapeDtypeStruct((nv, B, H, Lp, 1), F32),
            jax.ShapeDtypeStruct((B, H, dk, dv), F32),
        ],
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=1),
        name="lrnn_delta_product_bwd",
    )(qi, ki, vi, bi, lgc, sgc, *([m] if pre else []), hs, do, dht)
    return dq.sum(0), dk_.sum(0), dv_, db.sum(0), dh0


def _chunk_cumulative(la, sa, C, gated):
    """Within-chunk cumulative log|g| and sign, `[B, H, Lp] -> [B, H, Lp, 1]` f32.

    Ungated: zeros and ones without a cumulative sum. (`la`, `sa` are then constants, and XLA
    constant-folds a cumsum of a constant element by element: over a minute of compilation
    at T = 16384 on the GPU.)
    """
    B, H, Lp = la.shape
    if not gated:
        return jnp.zeros((B, H, Lp, 1), F32), jnp.ones((B, H, Lp, 1), F32)
    lc = jnp.cumsum(la.reshape(B, H, Lp // C, C), axis=-1).reshape(B, H, Lp, 1)
    neg = (sa < 0).astype(jnp.int32).reshape(B, H, Lp // C, C)
    sc = 1.0 - 2.0 * (jnp.cumsum(neg, axis=-1) % 2).astype(F32)
    return lc, sc.reshape(B, H, Lp, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _core(qi, ki, vi, bi, la, sa, h0, cfg):
    o, _, ht = _core_fwd(qi, ki, vi, bi, la, sa, h0, cfg)[0]
    return o, ht


def _core_fwd(qi, ki, vi, bi, la, sa, h0, cfg):
    C, pre = cfg[0], cfg[7]
    lgc, sgc = _chunk_cumulative(la, sa, C, cfg[2])
    m = _kernel_inverse(ki, bi, lgc, sgc, cfg) if pre else None
    o, hs, ht = _kernel_fwd(qi, ki, vi, bi, lgc, sgc, m, h0, cfg)
    return (o, hs, ht), (qi, ki, vi, bi, la, sa, lgc, sgc, m, hs, ht)


def _core_fwd_rule(qi, ki, vi, bi, la, sa, h0, cfg):
    (o, _, ht), res = _core_fwd(qi, ki, vi, bi, la, sa, h0, cfg)
    return (o, ht), res


def _core_bwd_rule(cfg, res, cts):
    qi, ki, vi, bi, la, sa, lgc, sgc, m, hs, ht = res
    do, dht = cts
    gated = cfg[2]
    dq, dk, dv, db, dh0 = _kernel_bwd(qi, ki, vi, bi, lgc, sgc, m, hs, do, dht.astype(F32),
                                      cfg)
    return (dq.astype(qi.dtype), dk.astype(ki.dtype), dv.astype(vi.dtype), db.astype(bi.dtype),
            gate_grad(qi, dq, vi, dv, ht, dht, la, gated), jnp.zeros_like(sa), dh0)


def gate_grad(qi, dq, vi, dv, ht, dht, la, gated, layout="bhtd"):
    """Gradient of the per-sub-step log|gate| `[B, H, Lp]` (zeros when ungated):
    `d log|g_u| = sum_{t >= u} (q_t . dq_t - v_t . dv_t) + sum(S_T * dS_T)`. The sequence
    arrays are `[B, H, Lp, d]` or, with `layout="bthd"`, `[B, Lp, H, d]`."""
    if not gated:
        return jnp.zeros_like(la)
    per_t = jnp.sum(qi.astype(F32) * dq, -1) - jnp.sum(vi.astype(F32) * dv, -1)
    if layout == "bthd":
        per_t = jnp.swapaxes(per_t, 1, 2)  # [B, H, Lp]
    return gate_grad_tokens(per_t, ht, dht)


def gate_grad_tokens(per_t, ht, dht):
    """`gate_grad` from the per-token terms `q_t . dq_t - v_t . dv_t` `[B, H, Lp]` (f32)."""
    rev = jnp.flip(jnp.cumsum(jnp.flip(per_t, -1), -1), -1)
    return rev + jnp.sum(ht * dht.astype(F32), axis=(-2, -1))[..., None]


_core.defvjp(_core_fwd_rule, _core_bwd_rule)


def recurrent_default(B: int, T: int, H: int, n_h: int, dk: int, dv: int, dtype) -> bool:
    """Whether `delta_product` runs the token-by-token kernel by default on a GPU: where it
    measured faster than the chunkwise kernels (`python -m experiments.bench.delta_recurrent`,
    `benchmarks/kernels/delta_recurrent_h200.json`, `benchmarks/RESULTS.md`): float32 inputs,
    `T n_h <= RECURRENT_MAX_L` and heads up to `RECURRENT_MAX_D` (in bfloat16 the
    chunk-parallel kernels were faster); and only while the states it saves for the backward
    (`B H T n_h dk dv` float32 values; the chunkwise kernels save one per chunk) stay within
    `RECURRENT_MAX_STATE_BYTES` (a memory guard, not a speed measurement)."""
    saved = 4 * B * H * T * n_h * dk * dv
    return (jnp.dtype(dtype) == F32 and T * n_h <= RECURRENT_MAX_L
            and max(dk, dv) <= RECURRENT_MAX_D and saved <= RECURRENT_MAX_STATE_BYTES)


RECURRENT_MAX_L = 2048  # the longest measured
RECURRENT_MAX_D = 128  # the widest measured
RECURRENT_MAX_STATE_BYTES = 16 << 30  # per call; an ensemble of seeds (vmap) multiplies it


def delta_product(q, k, v, beta, *, gate=None, initial_state=None, scale=1.0, chunk_size=64,
                  interpret=None, block_v=None, num_warps=4, precompute_inverse=None,
                  chunk_parallel=None, block_v_chunk=None, recurrent=None, _target=None,
                  _layout=None):
    """DeltaProduct (n_h Householder steps per token), chunkwise WY form, Pallas kernels.

    Args:
      q: `[B, T, H, dk]` queries (not scaled implicitly).
      k: `[B, T, H, n_h, dk]` keys (unit norm for the usual eigenvalue range).
      v: `[B, T, H, n_h, dv]` values.
      beta: `[B, T, H, n_h]` step sizes in [0, 2] (above 1: negative eigenvalues).
      gate: `[B, T, H]` forget gate in [-1, 1] applied before the steps, or None.
      initial_state: `[B, H, dk, dv]` or None (zeros).
      scale: python float multiplying q.
      chunk_size: sub-steps per chunk C (the interleaved sequence of T n_h sub-steps is chunked).
      interpret: interpret mode; None means "on CPU".
      block_v: value-dim tile per program (GPU default 64 when it divides dv).
      num_warps: Triton warps per program (GPU only).
      precompute_inverse: compute every chunk's `(I + A)^{-1}` first in a chunk-parallel
        kernel (grid (B, H, NC)) instead of inside the sequential chunk loop of the forward
        and backward kernels. Same results, the substitution off the sequential path: on an
        H100, DeltaNet bf16 fwd+bwd at (8, 2048, 16, 128) took 4.99 ms instead of 7.78 ms
        (benchmarks/RESULTS.md). None (default): on for 16-bit inputs, off for float32 (the
        f32 variant has not been compiled on a GPU yet; its tiles differ, see below).
      chunk_parallel: use `pallas_kernels.delta_chunk` instead: the sequential kernels do only
        the state products (`Vn = U - W S`, `S <- G S + K^T Vn`, and their adjoints), the
        inverse, W, U, the outputs and the gradients come from chunk-parallel kernels (fla's
        chunk_delta_rule organisation). Same results. None (default): on for 16-bit inputs on
        a GPU, where it is the faster path (H100, DeltaNet bf16 fwd+bwd at (8, 2048, 16, 128):
        1.70 ms against 4.86 ms, benchmarks/RESULTS.md), off elsewhere (f32 on GPU not timed;
        TPU not measured). `precompute_inverse` does not apply.
      block_v_chunk: with `chunk_parallel`, the value tile of the chunk-parallel kernels
        (default: the whole value dim up to 128; `block_v` tiles the sequential ones).
      recurrent: run `pallas_kernels.delta_recurrent` instead (token by token, one fused kernel
        each way, no chunks; `chunk_size`, `block_v`, `precompute_inverse`, `chunk_parallel`,
        `block_v_chunk` do not apply, `num_warps` does). None (default): on a GPU where
        `recurrent_default` says so, off elsewhere.

    Returns:
      o: `[B, T, H, dv]` in q's dtype; final_state: `[B, H, dk, dv]` f32.
    """
    B, T, H, n_h, dk, dv = check_shapes(q, k, v, beta, gate, initial_state)
    interpret = cm.resolve_interpret(interpret)
    platform = cm.target_platform(interpret, _target)
    C = int(chunk_size)
    if C < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size}")
    dtype = jnp.promote_types(q.dtype, k.dtype)
    if recurrent is None:
        recurrent = platform == "gpu" and recurrent_default(B, T, H, n_h, dk, dv, dtype)
    if recurrent:
        return delta_recurrent(q, k, v, beta, gate=gate, initial_state=initial_state,
                               scale=scale, interpret=interpret, num_warps=num_warps,
                               _target=_target)
    bv = block_v if block_v is not None else cm.value_tile(dv, platform)
    if platform == "gpu" and dtype == F32:
        # f32 inputs use 3xTF32 dots on GPU; at C = 64, BV = 64 they asked for 262-344 KB of
        # shared memory (H100 has 227 KB) and failed to launch. Halving both tiles is the fix
        # we apply (the f32 GPU tests pass with it, H100, 2026-11-23).
        C, bv = min(C, 32), min(bv, 32) if dv % 32 == 0 else bv
    if precompute_inverse is None:
        precompute_inverse = dtype != F32
    if chunk_parallel is None:
        chunk_parallel = platform == "gpu" and dtype != F32
    if dv % bv:
        raise ValueError(f"block_v={bv} must divide dv={dv}")
    L = T * n_h
    Lp = cm.round_up(max(L, 1), C)
    gated = gate is not None

    # chunk_parallel on GPU: the kernels read and write [B, L, H, d] (no transposes; free to
    # form for n_h = 1); elsewhere [B, H, L, d] (TPU block rules). `_layout` forces one (tests).
    layout = (_layout or ("bthd" if platform == "gpu" else "bhtd")) if chunk_parallel else "bhtd"

    def interleave(x, layout="bhtd"):  # [B, T, H, n_h, d] -> [B, H, Lp, d] or [B, Lp, H, d]
        d = x.shape[-1]
        if layout == "bthd":
            return cm.pad_axis(jnp.transpose(x, (0, 1, 3, 2, 4)).reshape(B, L, H, d), 1, Lp)
        return cm.pad_axis(jnp.transpose(x, (0, 2, 1, 3, 4)).reshape(B, H, L, d), 2, Lp)

    if n_h == 1:
        qf = q.astype(dtype)[:, :, :, None]
    else:
        qf = jnp.zeros((B, T, H, n_h, dk), dtype).at[:, :, :, n_h - 1].set(q.astype(dtype))
    qi = interleave(qf, layout)
    ki = interleave(k.astype(dtype), layout)
    vi = interleave(v.astype(dtype), layout)
    bi = interleave(beta[..., None])
    if gated:
        g = gate.astype(F32)
        la_t = jnp.log(jnp.maximum(jnp.abs(g), cm.GATE_FLOOR))
        sa_t = jnp.where(g < 0, -1.0, 1.0)
        pad_h = lambda x, fill: jnp.concatenate(
            [x[..., None], jnp.full((B, T, H, n_h - 1), fill, F32)], -1)
        la = interleave(pad_h(la_t, 0.0)[..., None])[..., 0]
        sa = interleave(pad_h(sa_t, 1.0)[..., None])[..., 0]
        sa = jnp.where(jnp.arange(Lp) < L, sa, 1.0)
    else:
        la = jnp.zeros((B, H, Lp), F32)
        sa = jnp.ones((B, H, Lp), F32)
    h0 = jnp.zeros((B, H, dk, dv), F32) if initial_state is None else initial_state.astype(F32)
    if chunk_parallel:
        from pallas_kernels import delta_chunk

        # value tiles: bv for the sequential kernels (B H dv / bv programs), the whole value
        # dim (up to 128) for the chunk-parallel ones (enough programs already; fewer repeats
        # of the key-side work), except for f32 on GPU (shared memory, see above)
        bvc = bv
        if block_v_chunk is not None:
            bvc = int(block_v_chunk)
        elif block_v is None and not (platform == "gpu" and dtype == F32):
            bvc = dv if dv <= 128 else (128 if dv % 128 == 0 else bv)
        if dv % bvc:
            raise ValueError(f"block_v_chunk={bvc} must divide dv={dv}")
        cfg = (C, float(scale), gated, interpret, platform, int(bv), int(num_warps), layout,
               int(bvc))
        o, ht = delta_chunk.core(qi, ki, vi, bi, la, sa, h0, cfg)
        if layout == "bthd":
            return o[:, n_h - 1:L:n_h], ht
    else:
        cfg = (C, float(scale), gated, interpret, platform, int(bv), int(num_warps),
               bool(precompute_inverse))
        o, ht = _core(qi, ki, vi, bi, la, sa, h0, cfg)
    o = o[:, :, n_h - 1:L:n_h]  # read-out after the last sub-step of each token
    return jnp.transpose(o, (0, 2, 1, 3)), ht
