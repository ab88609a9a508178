"""Gated linear attention, chunk-parallel form: only the chunk states are sequential.

Same recurrence and conventions as `pallas_kernels.gla` (`S_t = diag(g_t) S_{t-1} + k_t v_t^T`,
`o_t = S_t^T (scale q_t)`, per-key signed gates as cumulative log|g| plus a sign), organised
like fla's chunk_gla so that the sequential path does one state matmul per chunk of C tokens
instead of per sub-block of 16:

Forward
  1. `_sweep_kernel`, grid (B, H, dv / BV), parallel; loop over chunks inside: the state entering
     every chunk, `S_{c+1} = diag(G_C) S_c + (K_c * G_end)^T V_c` (one `[dk, C] x [C, BV]`
     product per chunk), stored f32.
  2. `_o_kernel`, grid (B, H, NC), all parallel: per chunk and per sub-block i of 16 queries,
     `O_i = (scale Q_i * G_i) S_c` + the diagonal 16 x 16 block (elementwise `[16, 16, dk]`,
     exact for any gates) + the earlier sub-blocks of the chunk through one masked
     `[16, C]` product whose factors are rescaled to the boundary b before sub-block i:
     `G_t / G_s = (G_t / G_b)(G_b / G_s)` with both factors of magnitude <= 1 (t > b >= s).
Backward
  3. `_sweep_kernel` (reverse), grid (B, H, dv / BV), parallel; chunks in reverse: the
     adjoint of the state after every chunk, `dS_c = diag(G_C) dS_{c+1} + (scale Q_c * G)^T dO_c`.
  4. `_grad_kernel`, grid (B, H, NC), all parallel: dq, dk, dv of a chunk from its entering
     state and the adjoint after it (inter-chunk parts as `[C, *]` products, intra-chunk parts
     sub-block by sub-block as in 2).
The gate gradient is assembled outside, as in `pallas_kernels.gla`.

Block shapes are powers of two for Triton (C, 16, dk, BV) and TPU-legal (chunk blocks
`[C, dk]` / `[C, dv]` with C a multiple of 16 and the last dim the full extent; state blocks
`[dk, dv]` or `[dk, BV]`). Opt-in (`gated_linear_attention(..., chunk_parallel=True)`): compiled
and tested on an H200, but slower there than the `split_intra` default (12.5 vs 10.9 ms fwd+bwd
at (8, 2048, 16, 128) bf16, benchmarks/RESULTS.md): the `[16, 16, dk]` decay block of the
diagonal sub-blocks, unrolled C / 16 times per program, does not fit a Triton program's
registers. The next step is fla's column-at-a-time form for those blocks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common as cm
from pallas_kernels.gla import gate_grad

F32 = jnp.float32
SUB = 16  # queries per sub-block inside a chunk


def _decay3(lg, sg):
    """Diagonal sub-block decays `[c(t), c(s), dk]`: `G_t / G_s` for s <= t, else 0."""
    r, c = cm.iotas(SUB)
    decay = jnp.exp(jnp.minimum(lg[:, None, :] - lg[None, :, :], 0.0))
    return jnp.where((r >= c)[:, :, None], sg[:, None, :] * sg[None, :, :] * decay, 0.0)


def _boundary(i, lg_ref, sg_ref, lg, sg, lg_all, sg_all, C):
    """Factors for sub-block i > 0 against the chunk's earlier tokens, rescaled at the last
    token b = 16 i - 1 before it: `(G_t / G_b)` for its queries `[16, dk]`, `(G_b / G_s)` for
    every token s of the chunk `[C, dk]` (0 for s > b), and the mask `s <= b` `[16, C]`."""
    b = pl.ds(i * SUB - 1, 1)
    lb, sb = lg_ref[b, :], sg_ref[b, :]  # [1, dk]
    fq = sg * sb * jnp.exp(lg - lb)  # t > b: exponent <= 0
    s_col, _ = cm.iotas(C, 1)
    before = s_col < i * SUB  # [C, 1]
    fk = jnp.where(before, sg_all * sb * jnp.exp(jnp.minimum(lb - lg_all, 0.0)), 0.0)
    _, s_idx = cm.iotas(SUB, C)
    return fq, fk, s_idx < i * SUB


def _sweep_kernel(x_ref, y_ref, lg_ref, sg_ref, gc_ref, s0_ref, ss_ref, sT_ref, *, NC, C, dk,
                  scale, reverse):
    """The chunk-to-chunk sweep (grid (B, H, dv / BV)). Forward (`x, y = k, v`): the state
    entering every chunk, `S <- diag(G_C) S + (k * G_C / G)^T v`. Backward (`reverse`,
    `x, y = q, dO`): the adjoint after every chunk, `dS <- diag(G_C) dS + (scale q * G)^T dO`.
    x/lg/sg: [Lp, dk]; y: [Lp, BV]; gc: [NC * dk, 1]; s0, sT: [dk, BV]; ss: [NC * dk, BV] f32
    (`ss[c]`: the value before chunk c's update)."""
    dt = x_ref.dtype

    def chunk(i, st):
        c = NC - 1 - i if reverse else i
        ss_ref[pl.ds(c * dk, dk), :] = st
        sl = pl.ds(c * C, C)
        lg, sg = lg_ref[sl, :], sg_ref[sl, :]
        if reverse:
            f = scale * sg * jnp.exp(lg)
        else:
            last = pl.ds(c * C + C - 1, 1)
            f = sg_ref[last, :] * sg * jnp.exp(lg_ref[last, :] - lg)
        xf = x_ref[sl, :].astype(F32) * f
        return gc_ref[pl.ds(c * dk, dk), :] * st + cm.mm_tn(xf, y_ref[sl, :], dt)

    sT_ref[...] = lax.fori_loop(0, NC, chunk, s0_ref[...].astype(F32))


def _o_kernel(q_ref, k_ref, v_ref, lg_ref, sg_ref, h_ref, o_ref, *, C, scale):
    # one chunk: q/k/lg/sg [C, dk]; v, o [C, dv]; h [dk, dv] f32 (the entering state)
    dt = q_ref.dtype
    lg_all, sg_all = lg_ref[...], sg_ref[...]
    k_all = k_ref[...].astype(F32)
    for i in range(C // SUB):  # static: C / 16 sub-blocks
        sl = pl.ds(i * SUB, SUB)
        q = q_ref[sl, :].astype(F32) * scale
        lg, sg = lg_ref[sl, :], sg_ref[sl, :]
        o = cm.mm(q * (sg * jnp.exp(lg)), h_ref[...], dt)  # from the entering state
        p = jnp.sum(q[:, None, :] * k_ref[sl, :].astype(F32)[None, :, :] * _decay3(lg, sg),
                    axis=-1)
        o = o + cm.mm(p, v_ref[sl, :], dt)  # the diagonal block
        if i > 0:  # the chunk's earlier sub-blocks
            fq, fk, mask = _boundary(i, lg_ref, sg_ref, lg, sg, lg_all, sg_all, C)
            pp = jnp.where(mask, cm.mm_nt(q * fq, k_all * fk, dt), 0.0)  # [16, C]
            o = o + cm.mm(pp, v_ref[...], dt)
        o_ref[sl, :] = o.astype(o_ref.dtype)


def _grad_kernel(q_ref, k_ref, v_ref, lg_ref, sg_ref, h_ref, dh_ref, do_ref,
                 dq_ref, dk_ref, dv_ref, *, C, scale):
    # one chunk: q/k/lg/sg [C, dk]; v, do [C, dv]; h (entering), dh (adjoint after) [dk, dv];
    # dq, dk [C, dk] and dv [C, dv] f32 (gradients of the unscaled q)
    dt = q_ref.dtype
    lg_all, sg_all = lg_ref[...], sg_ref[...]
    k_all = k_ref[...].astype(F32)
    last = pl.ds(C - 1, 1)
    g_end = sg_ref[last, :] * sg_all * jnp.exp(lg_ref[last, :] - lg_all)  # [C, dk]
    # inter-chunk parts (M = C)
    dv_ref[...] = cm.mm(k_all * g_end, dh_ref[...], dt)
    dk_ref[...] = cm.mm_nt(v_ref[...], dh_ref[...], dt) * g_end
    dq_ref[...] = cm.mm_nt(do_ref[...], h_ref[...], dt) * (scale * sg_all * jnp.exp(lg_all))
    for i in range(C // SUB):  # static
        sl = pl.ds(i * SUB, SUB)
        q = q_ref[sl, :].astype(F32) * scale
        k = k_ref[sl, :].astype(F32)
        lg, sg = lg_ref[sl, :], sg_ref[sl, :]
        do = do_ref[sl, :].astype(F32)
        # diagonal block
        gam3 = _decay3(lg, sg)
        p = jnp.sum(q[:, None, :] * k[None, :, :] * gam3, axis=-1)  # [16, 16]
        r, c = cm.iotas(SUB)
        dp = jnp.where(r >= c, cm.mm_nt(do, v_ref[sl, :], dt), 0.0)
        w3 = dp[:, :, None] * gam3
        dq_ref[sl, :] = dq_ref[sl, :] + jnp.sum(w3 * k[None, :, :], axis=1) * scale
        dk_ref[sl, :] = dk_ref[sl, :] + jnp.sum(w3 * q[:, None, :], axis=0)
        dv_ref[sl, :] = dv_ref[sl, :] + cm.mm_tn(p, do, dt)
        if i > 0:  # against the chunk's earlier sub-blocks
            fq, fk, mask = _boundary(i, lg_ref, sg_ref, lg, sg, lg_all, sg_all, C)
            qt, kt = q * fq, k_all * fk
            pp = jnp.where(mask, cm.mm_nt(qt, kt, dt), 0.0)  # [16, C]
            dpp = jnp.where(mask, cm.mm_nt(do, v_ref[...], dt), 0.0)  # [16, C]
            dv_ref[...] = dv_ref[...] + cm.mm_tn(pp, do, dt)
            dq_ref[sl, :] = dq_ref[sl, :] + cm.mm(dpp, kt, dt) * fq * scale
            dk_ref[...] = dk_ref[...] + cm.mm_tn(dpp, qt, dt) * fk


# ------------------------------------------------------------------------------------------
# pallas_call wrappers
# ------------------------------------------------------------------------------------------
def _seq_specs(B, H, Lp, dk, dv, bv, NC):
    """Sequential kernels: grid (B, H, dv / bv), all parallel."""
    seq_k = cm.block_spec((B, H, Lp, dk), (None, None, Lp, dk), lambda b, h, j: (b, h, 0, 0))
    seq_v = cm.block_spec((B, H, Lp, dv), (None, None, Lp, bv), lambda b, h, j: (b, h, 0, j))
    gc = cm.block_spec((B, H, NC * dk, 1), (None, None, NC * dk, 1),
                       lambda b, h, j: (b, h, 0, 0))
    state = cm.block_spec((B, H, dk, dv), (None, None, dk, bv), lambda b, h, j: (b, h, 0, j))
    states = cm.block_spec((B, H, NC * dk, dv), (None, None, NC * dk, bv),
                           lambda b, h, j: (b, h, 0, j))
    return seq_k, seq_v, gc, state, states


def _chunk_specs(B, H, Lp, dk, dv, C, NC):
    """Chunk-parallel kernels: grid (B, H, NC), all parallel."""
    ck = cm.block_spec((B, H, Lp, dk), (None, None, C, dk), lambda b, h, c: (b, h, c, 0))
    cv = cm.block_spec((B, H, Lp, dv), (None, None, C, dv), lambda b, h, c: (b, h, c, 0))
    st = cm.block_spec((B, H, NC * dk, dv), (None, None, dk, dv), lambda b, h, c: (b, h, c, 0))
    return ck, cv, st


def _params(platform, num_warps):
    return cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=1)


def _sweep(x, y, lgc, sgc, gc, s0, cfg, reverse):
    """`(ss [B, H, NC * dk, dv], final [B, H, dk, dv])` of `_sweep_kernel`."""
    C, scale, interpret, platform, bv, num_warps = cfg
    B, H, Lp, dk = x.shape
    dv = y.shape[-1]
    NC = Lp // C
    seq_k, seq_v, gcs, state, states = _seq_specs(B, H, Lp, dk, dv, bv, NC)
    return cm.pallas_call(
        platform,
        functools.partial(_sweep_kernel, NC=NC, C=C, dk=dk, scale=scale, reverse=reverse),
        grid=(B, H, dv // bv),  # all parallel
        in_specs=[seq_k, seq_v, seq_k, seq_k, gcs, state],
        out_specs=[states, state],
        out_shape=[jax.ShapeDtypeStruct((B, H, NC * dk, dv), F32),
                   jax.ShapeDtypeStruct((B, H, dk, dv), F32)],
        interpret=interpret, compiler_params=_params(platform, num_warps),
        name="lrnn_gla_chunk_dh" if reverse else "lrnn_gla_chunk_h",
    )(x, y, lgc, sgc, gc, s0)


def _outputs(qi, ki, vi, lgc, sgc, hs, cfg):
    C, scale, interpret, platform, _, num_warps = cfg
    B, H, Lp, dk = ki.shape
    dv = vi.shape[-1]
    NC = Lp // C
    ck, cv, st = _chunk_specs(B, H, Lp, dk, dv, C, NC)
    return cm.pallas_call(
        platform, functools.partial(_o_kernel, C=C, scale=scale),
        grid=(B, H, NC),  # all parallel
        in_specs=[ck, ck, cv, ck, ck, st],
        out_specs=cv,
        out_shape=jax.ShapeDtypeStruct((B, H, Lp, dv), qi.dtype),
        interpret=interpret, compiler_params=_params(platform, num_warps),
        name="lrnn_gla_chunk_o",
    )(qi, ki, vi, lgc, sgc, hs)


def _grads(qi, ki, vi, lgc, sgc, hs, dhs, do, cfg):
    C, scale, interpret, platform, _, num_warps = cfg
    B, H, Lp, dk = ki.shape
    dv = vi.shape[-1]
    NC = Lp // C
    ck, cv, st = _chunk_specs(B, H, Lp, dk, dv, C, NC)
    return cm.pallas_call(
        platform, functools.partial(_grad_kernel, C=C, scale=scale),
        grid=(B, H, NC),  # all parallel
        in_specs=[ck, ck, cv, ck, ck, st, st, cv],
        out_specs=[ck, ck, cv],
        out_shape=[jax.ShapeDtypeStruct((B, H, Lp, dk), F32),
                   jax.ShapeDtypeStruct((B, H, Lp, dk), F32),
                   jax.ShapeDtypeStruct((B, H, Lp, dv), F32)],
        interpret=interpret, compiler_params=_params(platform, num_warps),
        name="lrnn_gla_chunk_grad",
    )(qi, ki, vi, lgc, sgc, hs, dhs, do)


def prep_gates(la, sa, C):
    """Per-token log|g|, sign `[B, H, Lp, dk]` -> within-chunk cumulatives `[B, H, Lp, dk]`
    and each chunk's total decay as a column `[B, H, NC * dk, 1]`."""
    B, H, Lp, dk = la.shape
    NC = Lp // C
    lc = jnp.cumsum(la.reshape(B, H, NC, C, dk), axis=3)
    neg = jnp.cumsum((sa < 0).astype(jnp.int32).reshape(B, H, NC, C, dk), axis=3) % 2
    sc = 1.0 - 2.0 * neg.astype(F32)
    gc = (sc[:, :, :, -1] * jnp.exp(lc[:, :, :, -1])).reshape(B, H, NC * dk, 1)
    return lc.reshape(B, H, Lp, dk), sc.reshape(B, H, Lp, dk), gc


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def core(qi, ki, vi, la, sa, h0, cfg):
    """`(o [B, H, Lp, dv], final state)` from `[B, H, Lp, d]` inputs; cfg = (C, scale,
    interpret, platform, bv, num_warps)."""
    (o, ht), _ = _core_fwd(qi, ki, vi, la, sa, h0, cfg)
    return o, ht


def _core_fwd(qi, ki, vi, la, sa, h0, cfg):
    lgc, sgc, gc = prep_gates(la, sa, cfg[0])
    hs, ht = _sweep(ki, vi, lgc, sgc, gc, h0, cfg, reverse=False)
    o = _outputs(qi, ki, vi, lgc, sgc, hs, cfg)
    return (o, ht), (qi, ki, vi, lgc, sgc, gc, hs, ht, sa)


def _core_bwd(cfg, res, cts):
    qi, ki, vi, lgc, sgc, gc, hs, ht, sa = res
    do, dht = cts
    dht = dht.astype(F32)
    dhs, dh0 = _sweep(qi, do, lgc, sgc, gc, dht, cfg, reverse=True)
    dq, dk, dv = _grads(qi, ki, vi, lgc, sgc, hs, dhs, do, cfg)
    return (dq.astype(qi.dtype), dk.astype(ki.dtype), dv.astype(vi.dtype),
            gate_grad(qi, dq, ki, dk, ht, dht), jnp.zeros_like(sa), dh0)


core.defvjp(_core_fwd, _core_bwd)
