"""DeltaProduct / (Gated) DeltaNet, chunk-parallel form: only the state matmuls are sequential.

Same recurrence, interleaved layout and chunk algebra as `pallas_kernels.delta_product` (its
module docstring has the WY / UT formulas: `Tm = (I + A)^{-1} diag(beta)`, `W = Tm (G k)`,
`U = Tm V`, `Vn = U - W S0`, `O = (G q) S0 + P Vn`, `S_C = G_C S0 + (gam k)^T Vn`), organised
like fla's chunk_delta_rule so that the sequential kernels do two or three products per chunk
and everything else runs parallel over chunks:

Forward
  1. `_wu_kernel`, grid (B, H, NC), all parallel: each chunk's `(I + A)^{-1}` (kept for the
     backward), W and U (on GPU in 16 x 16 blocks, `_wu_blocks`); gated, also the keys
     `(G_C / G_t) k` of the sequential kernels.
  2. `_state_kernel`, grid (B, H, dv / BV), parallel; chunks in order: `Vn = U - W S`
     (stored), `S <- G_C S + (gam k)^T Vn`; the state entering every chunk stored.
  3. `_out_kernel`, grid (B, H, NC, dv / BV), all parallel: `O = (scale G q) S0 + P Vn`.
Backward
  4. `_dvn_local_kernel`, grid (B, H, NC, dv / BV), all parallel: the state-free part of
     dVn, `P^T dO`; gated, also the queries `scale G q` of the sequential kernel.
  5. `_dstate_kernel`, grid (B, H, dv / BV), parallel; chunks in reverse: `dVn = P^T dO +
     (gam k) dS` (stored), `dS <- G_C dS + (scale G q)^T dO - W^T dVn`; the adjoint of the
     state after every chunk stored.
  6. `_grad_wy_kernel`, then `_grad_qk_kernel`, grid (B, H, NC, dv / BV), all parallel: the
     gradients through W, U and the inverse (dk's part, dv, dbeta), then those through the
     outputs and the end state (dq, dk), of a chunk from its entering state, the adjoint
     after it, Vn and dVn (the formulas of `delta_product._bwd_kernel`, without the
     chunk-to-chunk dependence). Key-side gradients are partial sums over value tiles, added
     in the wrapper. Gated, they also form the per-token gate term `q . dq - v . dv`.
The gate gradient is its reverse cumulative sum (`delta_product.gate_grad_tokens`).

The default of `delta_product` for 16-bit inputs on a GPU (`chunk_parallel=None`); opt-in
elsewhere. Compiled and timed on an H100 (tests/test_pallas_gpu.py, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common as cm
from pallas_kernels.delta_product import _chunk_cumulative, chunk_inverse, gate_grad_tokens

F32 = jnp.float32
SUB = 16  # rows per block of the GPU organisation of `_wu_kernel`
WU_BLOCKS = [True]  # that organisation on GPU (False: the [C, C] one; a `stages --knob`)
# per-kernel Triton warps (None: `num_warps`), H100 `experiments.bench.stages --knob
# delta_chunk.WARPS.wu=1,2,4`: W/U 0.46 ms with 2 warps, 0.61 with 4, 0.67 with 1; the two
# gradient kernels 0.75 ms with 4 + 4, 0.91 - 1.14 with 8 in either
WARPS = {"wu": 2, "state": None, "dstate": None, "grad_wy": None, "grad_qk": None}


def _gates(c, C, lg_ref, sg_ref, gated, matrix=True):
    """Gate factors of chunk c (`[C, 1]` / `[1, 1]` f32; None when ungated): `G_t`,
    `G_C`, `G_C / G_t`, and (if `matrix`) the decay matrix `Gam[t, s] = G_t / G_s` (s <= t,
    else 0). The sequential kernels ask for no matrix: they only scale rows."""
    r, cc = cm.iotas(C) if matrix else (None, None)
    if not gated:
        return None, None, None, (jnp.where(r >= cc, 1.0, 0.0).astype(F32) if matrix else None)
    sl = pl.ds(c * C, C)
    lg, sg = lg_ref[sl, :], sg_ref[sl, :]
    last = pl.ds(c * C + C - 1, 1)
    lg_last, sg_last = lg_ref[last, :], sg_ref[last, :]
    gam = None
    if matrix:
        lg_r, sg_r = cm.col_to_row(lg), cm.col_to_row(sg)
        gam = jnp.where(r >= cc, sg * sg_r * jnp.exp(jnp.minimum(lg - lg_r, 0.0)), 0.0)
    return (sg * jnp.exp(lg), sg_last * jnp.exp(lg_last), sg_last * sg * jnp.exp(lg_last - lg),
            gam)


def _scaled(x, f):
    return x if f is None else f * x


# ------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------
def _wu_kernel(k_ref, v_ref, b_ref, lg_ref, sg_ref, m_ref, w_ref, u_ref, *kg_ref, C, gated,
               blocks):
    # one chunk: k [C, dk]; v [C, dv]; b/lg/sg [C, 1] -> m [C, C] f32; w [C, dk]; u [C, dv];
    # gated: kg [C, dk] = (G_C / G_t) k_t in k's dtype, the keys as the sequential kernels
    # use them (their dots would round them so anyway; no gate arithmetic on their chains)
    if gated:
        g_to_end = _gates(0, C, lg_ref, sg_ref, gated, matrix=False)[2]
        kg_ref[0][...] = (g_to_end * k_ref[...].astype(F32)).astype(kg_ref[0].dtype)
    if blocks:
        return _wu_blocks(k_ref, v_ref, b_ref, lg_ref, sg_ref, m_ref, w_ref, u_ref, C, gated)
    k = k_ref[...]
    dt = k.dtype
    beta = b_ref[...].astype(F32)
    minv = chunk_inverse(k, beta, lg_ref[...], sg_ref[...], C, gated)
    m_ref[...] = minv
    tm = minv * cm.col_to_row(beta)
    g_col = _gates(0, C, lg_ref, sg_ref, gated, matrix=False)[0]
    w_ref[...] = cm.mm(tm, _scaled(k.astype(F32), g_col), dt).astype(w_ref.dtype)
    u_ref[...] = cm.mm(tm, v_ref[...], dt).astype(u_ref.dtype)


def _inverse_blocks(k_ref, b_ref, lg_ref, sg_ref, m_ref, C, gated):
    """`(I + A)^{-1}` of one chunk in 16 x 16 blocks (GPU), stored in m_ref; returns the
    blocks `{(i, j): X_ij}` (j <= i), and the per-block betas and gates, for `_wu_blocks`.
    The blocks `A_ij = beta_i (k_i k_j^T) Gam_ij` (j <= i) straight from the refs; the
    diagonal blocks' inverses `D_i` by 16-row forward substitution; then block forward
    substitution `X_ij = -D_i sum_{j <= l < i} A_il X_lj`. The same exact substitution as
    `chunk_inverse`, reordered, with about C / 16 times fewer multiply-adds than its `[C, C]`
    products (whose work is mostly on the zero blocks above the diagonal)."""
    nb = C // SUB
    dt = k_ref.dtype
    r, c = cm.iotas(SUB)
    blk = [pl.ds(i * SUB, SUB) for i in range(nb)]
    k = [k_ref[b, :] for b in blk]
    beta = [b_ref[b, :].astype(F32) for b in blk]
    if gated:
        lg = [lg_ref[b, :] for b in blk]
        sg = [sg_ref[b, :] for b in blk]
        lg_r, sg_r = [cm.col_to_row(x) for x in lg], [cm.col_to_row(x) for x in sg]

    @functools.cache
    def kk(i, j):
        return cm.mm_nt(k[i], k[j], dt)

    @functools.cache
    def a_block(i, j):  # A_ij, i > j
        a = beta[i] * kk(i, j)
        if gated:
            a = a * (sg[i] * sg_r[j] * jnp.exp(jnp.minimum(lg[i] - lg_r[j], 0.0)))
        return a

    # the diagonal blocks' inverses, all in one 16-step loop (independent work per step):
    # step j finishes row j of every X_ii, `X_ii[j] -= sum_s A_ii[j, s] X_ii[s]`, with
    # A_ii[j, :] taken as a column from A_ii^T by a masked row reduction (on an H100 this beat
    # a [16, 16] product per step, 0.46 against 0.64 ms for the kernel)
    eye = jnp.where(r == c, 1.0, 0.0).astype(F32)
    a_t = []
    for i in range(nb):
        t = cm.col_to_row(beta[i]) * kk(i, i)  # kk(i, i) is symmetric
        if gated:  # Gam_ii^T
            t = t * (sg[i] * sg_r[i] * jnp.exp(jnp.minimum(lg_r[i] - lg[i], 0.0)))
        a_t.append(jnp.where(r < c, t, 0.0))

    def step(j, xs):
        out = []
        for t, x_ in zip(a_t, xs):
            a_col = jnp.sum(jnp.where(c == j, t, 0.0), axis=1, keepdims=True)
            out.append(x_ - jnp.where(r == j, jnp.sum(a_col * x_, axis=0, keepdims=True), 0.0))
        return tuple(out)

    d = lax.fori_loop(1, SUB, step, (eye,) * nb)
    x = {(i, i): d[i] for i in range(nb)}
    for gap in range(1, nb):  # block diagonals: every X_ij reads only nearer diagonals
        for j in range(nb - gap):
            i = j + gap
            acc = None
            for l in range(j, i):
                t = cm.mm(a_block(i, l), x[l, j])
                acc = t if acc is None else acc + t
            x[i, j] = -cm.mm(x[i, i], acc)
    zero = jnp.zeros((SUB, SUB), F32)
    for i in range(nb):
        for j in range(nb):
            m_ref[blk[i], blk[j]] = x[i, j] if j <= i else zero
    return x, beta, (lg, sg) if gated else None


def _wu_blocks(k_ref, v_ref, b_ref, lg_ref, sg_ref, m_ref, w_ref, u_ref, C, gated):
    """`_wu_kernel` in 16 x 16 blocks (GPU): `_inverse_blocks`, then W and U row block by row
    block. H100, (8, 2048, 16, 128) bf16: 0.46 ms against 0.87 for the `[C, C]` form
    (`experiments.bench.stages --knob delta_chunk.WU_BLOCKS=1,0 --only wu`)."""
    x, beta, gates = _inverse_blocks(k_ref, b_ref, lg_ref, sg_ref, m_ref, C, gated)
    nb = C // SUB
    dt = k_ref.dtype
    blk = [pl.ds(i * SUB, SUB) for i in range(nb)]
    for i in range(nb):
        w = u = None
        for j in range(i + 1):
            # (re)loaded per use: fewer live registers than keeping every block
            gk = k_ref[blk[j], :]
            if gated:
                lg, sg = gates
                gk = (gk.astype(F32) * (sg[j] * jnp.exp(lg[j]))).astype(dt)
            tm = x[i, j] * cm.col_to_row(beta[j])
            tw, tu = cm.mm(tm, gk, dt), cm.mm(tm, v_ref[blk[j], :], dt)
            w, u = (tw, tu) if w is None else (w + tw, u + tu)
        w_ref[blk[i], :] = w.astype(w_ref.dtype)
        u_ref[blk[i], :] = u.astype(u_ref.dtype)


def _state_kernel(k_ref, w_ref, u_ref, lg_ref, sg_ref, h0_ref, vn_ref, hs_ref, ht_ref, *,
                  C, NC, dk, gated):
    # k (gated: kg, see `_wu_kernel`), w: [L, dk]; u, vn: [L, BV]; lg/sg: [L, 1]; h0, ht:
    # [dk, BV]; hs: [NC * dk, BV]
    dt = k_ref.dtype

    def body(c, s):
        hs_ref[pl.ds(c * dk, dk), :] = s.astype(hs_ref.dtype)
        sl = pl.ds(c * C, C)
        g_end = _gates(c, C, lg_ref, sg_ref, gated, matrix=False)[1]
        vn = u_ref[sl, :].astype(F32) - cm.mm(w_ref[sl, :], s, dt)
        vn_ref[sl, :] = vn.astype(vn_ref.dtype)
        return _scaled(s, g_end) + cm.mm_tn(k_ref[sl, :], vn, dt)

    ht_ref[...] = lax.fori_loop(0, NC, body, h0_ref[...].astype(F32))


def _out_kernel(q_ref, k_ref, lg_ref, sg_ref, vn_ref, h_ref, o_ref, *, C, scale, gated):
    # one chunk and value tile: q, k [C, dk]; lg/sg [C, 1]; vn, o [C, BV]; h [dk, BV] f32
    dt = q_ref.dtype
    q = q_ref[...].astype(F32) * scale
    g_col, _, _, gam = _gates(0, C, lg_ref, sg_ref, gated)
    p = cm.mm_nt(q, k_ref[...], dt) * gam
    o = cm.mm(_scaled(q, g_col), h_ref[...], dt) + cm.mm(p, vn_ref[...], dt)
    o_ref[...] = o.astype(o_ref.dtype)


def _dvn_local_kernel(q_ref, k_ref, lg_ref, sg_ref, do_ref, d_ref, *gq_ref, C, scale, gated):
    # one chunk and value tile: dVn's state-free part P^T dO, [C, BV] f32; gated: also
    # gq [C, dk] = scale G_t q_t in q's dtype, the queries as `_dstate_kernel` uses them
    dt = q_ref.dtype
    q = q_ref[...].astype(F32) * scale
    g_col, _, _, gam = _gates(0, C, lg_ref, sg_ref, gated)
    if gated:
        gq_ref[0][...] = (g_col * q).astype(gq_ref[0].dtype)
    p = cm.mm_nt(q, k_ref[...], dt) * gam
    d_ref[...] = cm.mm_tn(p, do_ref[...], dt)


def _dstate_kernel(q_ref, k_ref, w_ref, lg_ref, sg_ref, do_ref, dl_ref, dht_ref,
                   dvn_ref, dhs_ref, dh0_ref, *, C, NC, dk, scale, gated):
    # q, k, w: [L, dk] (gated: gq and kg, see `_dvn_local_kernel` and `_wu_kernel`); do, dl
    # (P^T dO), dvn: [L, BV]; dht, dh0: [dk, BV]; dhs: [NC * dk, BV] (adjoint of the state
    # after chunk c)
    dt = q_ref.dtype

    def body(i, ds):
        c = NC - 1 - i
        dhs_ref[pl.ds(c * dk, dk), :] = ds.astype(dhs_ref.dtype)
        sl = pl.ds(c * C, C)
        g_end = _gates(c, C, lg_ref, sg_ref, gated, matrix=False)[1]
        dvn = dl_ref[sl, :] + cm.mm(k_ref[sl, :], ds, dt)
        dvn_ref[sl, :] = dvn.astype(dvn_ref.dtype)
        # gated: q is `scale G q` already; else the scale goes on the product (no scaled copy
        # of q on the loop's chain)
        qdo = cm.mm_tn(q_ref[sl, :], do_ref[sl, :], dt)
        return (_scaled(ds, g_end) + (qdo if gated else scale * qdo)
                - cm.mm_tn(w_ref[sl, :], dvn, dt))

    dh0_ref[...] = lax.fori_loop(0, NC, body, dht_ref[...].astype(F32))


def _grad_wy_kernel(k_ref, v_ref, b_ref, lg_ref, sg_ref, m_ref, h_ref, dvn_ref,
                    dk_ref, dv_ref, db_ref, *dl_ref, C, gated):
    # The gradients through W, U and (I + A)^{-1}, of one chunk and value tile: k [C, dk];
    # v, dvn, dv [C, BV]; b/lg/sg [C, 1]; m [C, C]; h (entering state) [dk, BV]; dk [C, dk]
    # and db [C, 1] are this value tile's parts, dk also only this kernel's part (the rest in
    # `_grad_qk_kernel`). Gated: also dl [C, 1] = -v . dv (this tile), the value side of the
    # per-token gate term (see `gate_grad_tokens`).
    dt = k_ref.dtype
    r, cc = cm.iotas(C)
    k = k_ref[...]  # the input dtype: dots only
    beta = b_ref[...].astype(F32)
    beta_r = cm.col_to_row(beta)
    g_col = _gates(0, C, lg_ref, sg_ref, gated, matrix=False)[0]
    minv = m_ref[...]
    tm = minv * beta_r
    dvn = dvn_ref[...]
    # (ordered for few live values: no [C, dk] f32 accumulator across the Minv products)
    # U = Tm V
    dv = cm.mm_tn(tm, dvn, dt)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    if gated:
        dl_ref[0][...] = -jnp.sum(v_ref[...].astype(F32) * dv, axis=1, keepdims=True)
    # W = Tm (G k), Vn = U - W S0 (dW rounded to the dot dtype once, as each use would)
    dw = (-cm.mm_nt(dvn, h_ref[...], dt)).astype(dt)  # [C, dk]
    # dW (G k)^T with G on the product's columns (no scaled copy of k)
    dtm = (_scaled(cm.mm_nt(dw, k, dt), None if g_col is None else cm.col_to_row(g_col))
           + cm.mm_nt(dvn, v_ref[...], dt))  # [C, C]
    # Tm = Minv diag(beta), Minv = (I + A)^{-1}, A = strict_lower(beta (k k^T) Gam)
    db_r = jnp.sum(dtm * minv, axis=0, keepdims=True)  # [1, C]
    dm = -cm.mm_tn(minv, cm.mm_nt(dtm * beta_r, minv))  # -Minv^T dMinv Minv^T (f32)
    da = jnp.where(r > cc, dm, 0.0)
    if gated:
        da = da * _gates(0, C, lg_ref, sg_ref, gated)[3]
    db_ref[...] = (jnp.sum(da * cm.mm_nt(k, k, dt), axis=1, keepdims=True)
                   + cm.row_to_col(db_r))
    dkk_mat = da * beta
    dkk = (_scaled(cm.mm_tn(tm, dw, dt), g_col) + cm.mm(dkk_mat, k, dt)
           + cm.mm_tn(dkk_mat, k, dt))
    dk_ref[...] = dkk.astype(dk_ref.dtype)


def _grad_qk_kernel(q_ref, k_ref, lg_ref, sg_ref, h_ref, dh_ref, vn_ref, do_ref, dkw_ref,
                    *refs, C, scale, gated):
    # The gradients through the outputs and the end state, of one chunk and value tile:
    # q, k, dq, dk [C, dk] (this value tile's parts); h (entering state), dh (adjoint after the
    # chunk) [dk, BV]; vn, do [C, BV]; dkw: `_grad_wy_kernel`'s part of dk, added here.
    # Gated: dlv [C, 1] in (-v . dv), dl [C, 1] out = q . dq + dlv (this tile's part).
    if gated:
        dlv_ref, dq_ref, dk_ref, dl_ref = refs
    else:
        dq_ref, dk_ref = refs
    dt = q_ref.dtype
    r, cc = cm.iotas(C)
    q = q_ref[...].astype(F32) * scale
    g_col, _, g_to_end, gam = _gates(0, C, lg_ref, sg_ref, gated)
    vn, do = vn_ref[...], do_ref[...]
    dpg = jnp.where(r >= cc, cm.mm_nt(do, vn, dt), 0.0) * gam  # [C, C]
    dq = _scaled(cm.mm_nt(do, h_ref[...], dt), g_col) + cm.mm(dpg, k_ref[...], dt)
    dq = dq * scale
    dq_ref[...] = dq.astype(dq_ref.dtype)
    if gated:
        dl_ref[...] = (jnp.sum(q_ref[...].astype(F32) * dq, axis=1, keepdims=True)
                       + dlv_ref[...])
    dkk = (cm.mm_tn(dpg, q, dt) + _scaled(cm.mm_nt(vn, dh_ref[...], dt), g_to_end)
           + dkw_ref[...].astype(F32))
    dk_ref[...] = dkk.astype(dk_ref.dtype)


# ------------------------------------------------------------------------------------------
# pallas_call wrappers
# ------------------------------------------------------------------------------------------
# Sequence arrays (q, k, v, W, U, Vn, o, dO and the gradients) come in one of two layouts,
# cfg[7]: "bhtd" `[B, H, Lp, d]` (TPU: the blocks' last two dims are then `[rows, d]`, legal)
# or "bthd" `[B, Lp, H, d]` (GPU: the caller's own layout, so no transposes around the
# kernels; a block `[rows, d]` is a strided load, which the Triton lowering handles). Per-token
# scalars (beta, gates) `[B, H, Lp, 1]`, the inverses `[B, H, Lp, C]` and the chunk states
# `[B, H, NC * dk, dv]` are always head-major.


_dims, _seq_shape, _tspec = cm.seq_dims, cm.seq_shape, cm.seq_spec


def _params(platform, n, num_warps):
    # num_stages=3: Triton software-pipelines the chunk loops' loads (H200, DeltaNet fwd+bwd
    # 2.3 ms against 2.8 ms with 1 stage; `experiments.bench.stages --stages 1,3`)
    return cm.compiler_params(platform, n, num_warps=num_warps, num_stages=3)


def _chunk_specs(B, H, Lp, dk, dv, C, NC, bv, layout):
    """Chunk-parallel kernels: grid (B, H, NC, dv / bv), all parallel."""
    ck = _tspec(B, H, Lp, dk, C, dk, layout, lambda b, h, c, j: (b, h, c, 0))
    cv = _tspec(B, H, Lp, dv, C, bv, layout, lambda b, h, c, j: (b, h, c, j))
    c1 = cm.block_spec((B, H, Lp, 1), (None, None, C, 1), lambda b, h, c, j: (b, h, c, 0))
    cm_ = cm.block_spec((B, H, Lp, C), (None, None, C, C), lambda b, h, c, j: (b, h, c, 0))
    st = cm.block_spec((B, H, NC * dk, dv), (None, None, dk, bv),
                       lambda b, h, c, j: (b, h, c, j))
    nv = dv // bv
    pk = _tspec(B, H, Lp, dk, C, dk, layout, lambda b, h, c, j: (j, b, h, c, 0), lead=(nv,))
    p1 = cm.block_spec((nv, B, H, Lp, 1), (None, None, None, C, 1),
                       lambda b, h, c, j: (j, b, h, c, 0))
    return ck, c1, cv, cm_, st, pk, p1


def _seq_specs(B, H, Lp, dk, dv, bv, NC, layout):
    """Sequential kernels: grid (B, H, dv / bv), all parallel."""
    sk = _tspec(B, H, Lp, dk, Lp, dk, layout, lambda b, h, j: (b, h, 0, 0))
    sv = _tspec(B, H, Lp, dv, Lp, bv, layout, lambda b, h, j: (b, h, 0, j))
    s1 = cm.block_spec((B, H, Lp, 1), (None, None, Lp, 1), lambda b, h, j: (b, h, 0, 0))
    state = cm.block_spec((B, H, dk, dv), (None, None, dk, bv), lambda b, h, j: (b, h, 0, j))
    states = cm.block_spec((B, H, NC * dk, dv), (None, None, NC * dk, bv),
                           lambda b, h, j: (b, h, 0, j))
    return sk, s1, sv, state, states


def _wu(ki, vi, bi, lgc, sgc, cfg):
    """`(inverses, W, U, kg)`: kg the keys of the sequential kernels (gated: `(G_C / G_t) k`,
    see `_wu_kernel`; else k itself)."""
    C, _, gated, interpret, platform, _, num_warps, layout, _ = cfg
    B, H, Lp, dk = _dims(ki, layout)
    dv = vi.shape[-1]
    NC = Lp // C
    blk_k = _tspec(B, H, Lp, dk, C, dk, layout, lambda b, h, c: (b, h, c, 0))
    blk_v = _tspec(B, H, Lp, dv, C, dv, layout, lambda b, h, c: (b, h, c, 0))
    blk_1 = cm.block_spec((B, H, Lp, 1), (None, None, C, 1), lambda b, h, c: (b, h, c, 0))
    blk_m = cm.block_spec((B, H, Lp, C), (None, None, C, C), lambda b, h, c: (b, h, c, 0))
    blocks = platform == "gpu" and WU_BLOCKS[0] and C % SUB == 0 and C > SUB
    m_shape = jax.ShapeDtypeStruct((B, H, Lp, C), F32)
    wu_shape = [  # W: only read by dots; U: enters Vn = U - W S, kept f32
        jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dk, layout), ki.dtype),
        jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dv, layout), F32)]
    kg_shape = [jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dk, layout), ki.dtype)] * gated
    m, w, u, *kg = cm.pallas_call(
        platform, functools.partial(_wu_kernel, C=C, gated=gated, blocks=blocks),
        grid=(B, H, NC),  # all parallel
        in_specs=[blk_k, blk_v, blk_1, blk_1, blk_1],
        out_specs=[blk_m, blk_k, blk_v] + [blk_k] * gated,
        out_shape=[m_shape, *wu_shape, *kg_shape],
        interpret=interpret, compiler_params=_params(platform, 3, WARPS["wu"] or num_warps),
        name="lrnn_delta_chunk_wu",
    )(ki, vi, bi, lgc, sgc)
    return m, w, u, (kg[0] if gated else ki)


def _states(ki, w, u, lgc, sgc, h0, cfg):
    """`(Vn, the state entering every chunk, the final state)` from the keys `kg` of `_wu`
    (ki here). The chunk states are stored in the input dtype: their readers (`_out_kernel`,
    the gradient kernels) cast them to that dtype for their dots anyway."""
    C, _, gated, interpret, platform, bv, num_warps, layout, _ = cfg
    B, H, Lp, dk = _dims(ki, layout)
    dv = u.shape[-1]
    NC = Lp // C
    sk, s1, sv, state, states = _seq_specs(B, H, Lp, dk, dv, bv, NC, layout)
    return cm.pallas_call(
        platform, functools.partial(_state_kernel, C=C, NC=NC, dk=dk, gated=gated),
        grid=(B, H, dv // bv),  # all parallel
        in_specs=[sk, sk, sv, s1, s1, state],
        out_specs=[sv, states, state],
        out_shape=[jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dv, layout), ki.dtype),
                   jax.ShapeDtypeStruct((B, H, NC * dk, dv), ki.dtype),
                   jax.ShapeDtypeStruct((B, H, dk, dv), F32)],
        interpret=interpret, compiler_params=_params(platform, 3, WARPS["state"] or num_warps),
        name="lrnn_delta_chunk_state",
    )(ki, w, u, lgc, sgc, h0)


def _outputs(qi, ki, lgc, sgc, vn, hs, cfg):
    C, scale, gated, interpret, platform, _, num_warps, layout, bv = cfg
    B, H, Lp, dk = _dims(ki, layout)
    dv = vn.shape[-1]
    NC = Lp // C
    ck, c1, cv, _, st, _, _ = _chunk_specs(B, H, Lp, dk, dv, C, NC, bv, layout)
    return cm.pallas_call(
        platform, functools.partial(_out_kernel, C=C, scale=scale, gated=gated),
        grid=(B, H, NC, dv // bv),  # all parallel
        in_specs=[ck, ck, c1, c1, cv, st],
        out_specs=cv,
        out_shape=jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dv, layout), qi.dtype),
        interpret=interpret, compiler_params=_params(platform, 4, num_warps),
        name="lrnn_delta_chunk_out",
    )(qi, ki, lgc, sgc, vn, hs)


def _dvn_local(qi, ki, lgc, sgc, do, cfg):
    C, scale, gated, interpret, platform, _, num_warps, layout, bv = cfg
    B, H, Lp, dk = _dims(ki, layout)
    dv = do.shape[-1]
    NC = Lp // C
    ck, c1, cv, _, _, _, _ = _chunk_specs(B, H, Lp, dk, dv, C, NC, bv, layout)
    # gq: one block per chunk (the key spec), which every value tile writes (identical values)
    dl, *gq = cm.pallas_call(
        platform, functools.partial(_dvn_local_kernel, C=C, scale=scale, gated=gated),
        grid=(B, H, NC, dv // bv),  # all parallel
        in_specs=[ck, ck, c1, c1, cv],
        out_specs=[cv] + [ck] * gated,
        out_shape=[jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dv, layout), F32)]
        + [jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dk, layout), qi.dtype)] * gated,
        interpret=interpret, compiler_params=_params(platform, 4, num_warps),
        name="lrnn_delta_chunk_dvn_local",
    )(qi, ki, lgc, sgc, do)
    return dl, (gq[0] if gated else qi)


def _adjoints(qi, ki, w, lgc, sgc, do, dl, dht, cfg):
    """`(dVn, the adjoint after every chunk, dS0)` from the queries `gq` of `_dvn_local` and
    the keys `kg` of `_wu` (qi, ki here); dVn and the adjoints stored in the input dtype
    (their readers, the gradient kernels, cast them to that dtype for their dots anyway)."""
    C, scale, gated, interpret, platform, bv, num_warps, layout, _ = cfg
    B, H, Lp, dk = _dims(ki, layout)
    dv = do.shape[-1]
    NC = Lp // C
    sk, s1, sv, state, states = _seq_specs(B, H, Lp, dk, dv, bv, NC, layout)
    return cm.pallas_call(
        platform,
        functools.partial(_dstate_kernel, C=C, NC=NC, dk=dk, scale=scale, gated=gated),
        grid=(B, H, dv // bv),  # all parallel
        in_specs=[sk, sk, sk, s1, s1, sv, sv, state],
        out_specs=[sv, states, state],
        out_shape=[jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dv, layout), qi.dtype),
                   jax.ShapeDtypeStruct((B, H, NC * dk, dv), qi.dtype),
                   jax.ShapeDtypeStruct((B, H, dk, dv), F32)],
        interpret=interpret,
        compiler_params=_params(platform, 3, WARPS["dstate"] or num_warps),
        name="lrnn_delta_chunk_dstate",
    )(qi, ki, w, lgc, sgc, do, dl, dht)


def _grads(qi, ki, vi, bi, lgc, sgc, m, hs, dhs, vn, dvn, do, cfg):
    """`(dq, dk, dv, dbeta, dl)`, dl the per-token gate term `q . dq - v . dv` `[B, H, Lp]`
    (None ungated). Two kernels: the W / U part, then the output part, which adds the first's
    dk (split in two: fewer live values each, no register spills; H100 0.75 ms against 1.11
    for one kernel, `stages --only grads`, 2026-11-26). With one value tile the gradients are
    written in the input dtype (the gate term is formed in f32 inside); else f32, summed over
    value tiles here."""
    C, scale, gated, interpret, platform, _, num_warps, layout, bv = cfg
    B, H, Lp, dk = _dims(ki, layout)
    dv = vi.shape[-1]
    NC = Lp // C
    nv = dv // bv
    gdt = qi.dtype if nv == 1 else F32
    ck, c1, cv, cmm, st, pk, p1 = _chunk_specs(B, H, Lp, dk, dv, C, NC, bv, layout)
    kshape = jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dk, layout, (nv,)), gdt)
    vshape = jax.ShapeDtypeStruct(_seq_shape(B, H, Lp, dv, layout), gdt)
    sshape = jax.ShapeDtypeStruct((nv, B, H, Lp, 1), F32)  # per-token scalars
    g1 = [sshape] if gated else []
    dkw, dv_, db, *dlv = cm.pallas_call(
        platform, functools.partial(_grad_wy_kernel, C=C, gated=gated),
        grid=(B, H, NC, nv),  # all parallel
        in_specs=[ck, cv, c1, c1, c1, cmm, st, cv],
        out_specs=[pk, cv, p1] + [p1] * gated,
        out_shape=[kshape, vshape, sshape] + g1,
        interpret=interpret,
        compiler_params=_params(platform, 4, WARPS["grad_wy"] or num_warps),
        name="lrnn_delta_chunk_grad_wy",
    )(ki, vi, bi, lgc, sgc, m, hs, dvn)
    dq, dk_, *dl = cm.pallas_call(
        platform, functools.partial(_grad_qk_kernel, C=C, scale=scale, gated=gated),
        grid=(B, H, NC, nv),  # all parallel
        in_specs=[ck, ck, c1, c1, st, st, cv, cv, pk] + [p1] * gated,
        out_specs=[pk, pk] + [p1] * gated,
        out_shape=[kshape, kshape] + g1,
        interpret=interpret,
        compiler_params=_params(platform, 4, WARPS["grad_qk"] or num_warps),
        name="lrnn_delta_chunk_grad_qk",
    )(qi, ki, lgc, sgc, hs, dhs, vn, do, dkw, *dlv)
    dl = dl[0].sum(0)[..., 0] if gated else None
    if nv == 1:
        return dq[0], dk_[0], dv_, db[0], dl
    return dq.sum(0), dk_.sum(0), dv_, db.sum(0), dl


# ------------------------------------------------------------------------------------------
# custom_vjp core (same contract as delta_product._core)
# ------------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def core(qi, ki, vi, bi, la, sa, h0, cfg):
    """`(o, final state)` from the interleaved inputs (sequence arrays in the layout cfg[7],
    see above); cfg = (C, scale, gated, interpret, platform, bv, num_warps, layout, bvc):
    value tiles bv for the sequential kernels (more programs), bvc for the chunk-parallel."""
    (o, ht), _ = _core_fwd(qi, ki, vi, bi, la, sa, h0, cfg)
    return o, ht


def _core_fwd(qi, ki, vi, bi, la, sa, h0, cfg):
    C, gated = cfg[0], cfg[2]
    lgc, sgc = _chunk_cumulative(la, sa, C, gated)
    m, w, u, kg = _wu(ki, vi, bi, lgc, sgc, cfg)
    vn, hs, ht = _states(kg, w, u, lgc, sgc, h0, cfg)
    o = _outputs(qi, ki, lgc, sgc, vn, hs, cfg)
    return (o, ht), (qi, ki, vi, bi, la, sa, lgc, sgc, m, w, kg, vn, hs, ht)


def _core_bwd(cfg, res, cts):
    qi, ki, vi, bi, la, sa, lgc, sgc, m, w, kg, vn, hs, ht = res
    do, dht = cts
    gated = cfg[2]
    dl, gq = _dvn_local(qi, ki, lgc, sgc, do, cfg)
    dvn, dhs, dh0 = _adjoints(gq, kg, w, lgc, sgc, do, dl, dht.astype(F32), cfg)
    dq, dk, dv, db, dl = _grads(qi, ki, vi, bi, lgc, sgc, m, hs, dhs, vn, dvn, do, cfg)
    dla = gate_grad_tokens(dl, ht, dht) if gated else jnp.zeros_like(la)
    return (dq.astype(qi.dtype), dk.astype(ki.dtype), dv.astype(vi.dtype), db.astype(bi.dtype),
            dla, jnp.zeros_like(sa), dh0)


core.defvjp(_core_fwd, _core_bwd)
