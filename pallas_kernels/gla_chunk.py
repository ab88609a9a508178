"""Gated linear attention, chunk-parallel form: only the chunk states are sequential.

Same recurrence and conventions as `pallas_kernels.gla` (`S_t = diag(g_t) S_{t-1} + k_t v_t^T`,
`o_t = S_t^T (scale q_t)`, per-key signed gates as cumulative log|g| plus a sign, every
exponent taken <= 0), organised like fla's chunk_gla: the intra-chunk score matrix
`A[t, s] = sum_i (scale q_ti) k_si G_ti / G_si` (s <= t, within a chunk of C tokens) is built
once, in small programs, and everything else is plain products.

Forward
  0. `_prep_kernel`, grid (B, H, NC, dk / BK), all parallel: from the gates, the within-chunk
     cumulative log|g| and sign (cumulative sums as Triton scans on GPU, triangular products
     elsewhere) and each chunk's total decay.
  1. `_sweep_kernel`, grid (B, H, dv / BV), parallel; loop over chunks inside: the state entering
     every chunk, `S_{c+1} = diag(G_C) S_c + (K_c * G_end)^T V_c` (one `[dk, C] x [C, BV]`
     product per chunk), stored in the input dtype (its readers cast to it anyway).
  2. `_a_kernel`, grid (B, H, T / 16), all parallel: the 16 rows of A of one sub-block of
     queries, by products whose factors are rescaled at the sub-block's first token t0:
     `G_t / G_s = (G_t / G_t0) (G_t0 / G_s)`, both of magnitude <= 1 for s < t0 <= t. The
     diagonal 16 x 16 block joins the products when its within-block decay stays above
     e^-SPAN_LIMIT on every key (`G_t0 / G_s <= e^40` there: no overflow, f32-relative
     precision); steeper blocks go one key column at a time (`[16, dk]` elementwise per
     column: exact for any gate), chosen per program (`lax.cond` / `pl.when`). GPU: a loop
     over the key blocks up to the diagonal, `[16, 16]` products stored in place; TPU/CPU: one
     masked `[16, dk] x [dk, C]` product (no dynamic lane offsets).
  3. `_o_kernel`, grid (B, H, NC, dv / BVc), all parallel: `O = (scale Q * G) S_c + A V`.
Backward
  4. `_sweep_kernel` (reverse): the adjoint of the state after every chunk,
     `dS_c = diag(G_C) dS_{c+1} + (scale Q_c * G)^T dO_c`.
  5. `_dv_kernel`, grid (B, H, NC), all parallel: `dA = tril(dO V^T)` (f32),
     `dV = A^T dO + (K * G_end) dS`, and the inter-chunk parts of dq, dk.
  6. `_dqk_kernel`, grid (B, H, T / 16), all parallel: dq, dk of one sub-block from dA (as in 2:
     rescaled products, the diagonal block among them unless steep, then a column loop; on GPU
     a loop over the contributing sub-blocks only), plus the per-token gate-gradient term
     `q dq - k dk`.
  7. `_revcum_kernel`, grid (B, H, dk / BK), parallel; chunks in reverse: the gate gradient,
     the reverse cumulative sum of `q dq - k dk` plus the final-state term (the formula of
     `pallas_kernels.gla.gate_grad`).

A NaN or inf reaches only later outputs and states, as in a token loop (forward): a non-finite
gate makes the cumulative log|g| NaN from its row on (`_prep_kernel`; the sweep's and the output
kernel's exp carry it, while the Triton lowering's min and max drop NaN), the scores are masked
after their products, `A V` goes through `_common.causal_mm`, and a NaN span counts as steep
(`_fast`).

Sequence arrays (q, k, v, o, the gates, the gradients) are `[B, H, Lp, d]` ("bhtd", TPU/CPU) or
the caller's `[B, Lp, H, d]` ("bthd", GPU: no transposes); A, dA `[B, H, Lp, C]` and the chunk
states `[B, H, NC * dk, dv]` are head-major. Blocks are TPU-legal (`[16 or C, d]` with d the
full extent, `[C, C]`, `[dk, dv]`). The default of `gated_linear_attention` for 16-bit inputs
on a GPU (`chunk_parallel=None`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common as cm
from pallas_kernels._scan import AVAILABLE as SCAN_AVAILABLE
from pallas_kernels._scan import linear_scan

F32 = jnp.float32
SUB = 16  # queries per sub-block inside a chunk
# A diagonal 16 x 16 block whose within-block decay `|G_e / G_t0|` stays above e^-SPAN_LIMIT on
# every key uses rescaled products (factors up to e^SPAN_LIMIT, far from f32 overflow); steeper
# blocks go one key column at a time.
SPAN_LIMIT = 40.0


def _row(ref, t):
    """Row t of a `[rows, d]` ref as `[1, d]` f32."""
    return ref[pl.ds(t, 1), :].astype(F32)


def _diag_decay(j, lg, sg, lgj, sgj):
    """`G_t / G_j` for the sub-block's rows t >= j, else 0: `[16, dk]`."""
    r, _ = cm.iotas(SUB, 1)
    return jnp.where(r >= j, sg * sgj * jnp.exp(jnp.minimum(lg - lgj, 0.0)), 0.0)


# ------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------
def _cumsum(x, scan):
    """Cumulative sum down the rows of `[C, d]` (f32): Triton's scan on GPU (`scan`), else a
    product with the lower-triangular ones (exact for counts, f32-accurate otherwise)."""
    if scan:
        return jnp.cumsum(x, axis=0)
    r, c = cm.iotas(x.shape[0])
    return cm.mm(jnp.where(r >= c, 1.0, 0.0).astype(F32), x)


def _prep_kernel(g_ref, lc_ref, sc_ref, gc_ref, *, tiny, scan):
    # one chunk: g [C, dk] (the per-key gates, f32) -> lc: cumulative log|g| (f32), sc:
    # cumulative sign (+-1, bf16) [C, dk]; gc: the chunk's total decay as a column [dk, 1].
    # A non-finite gate makes lc NaN from its row on in its key column (and nowhere else):
    # set to 1 before the cumulative sum (a triangular product would spread it up the column;
    # the Triton lowering's max drops NaN), lc set to NaN after it. The state sweep's and the
    # output kernel's exp(lc) (no min / max) carry it into the state and the outputs.
    g = g_ref[...]
    C = g.shape[0]
    ok = jnp.isfinite(g)
    r, _ = cm.iotas(C, g.shape[1])
    first = jnp.min(jnp.where(ok, C, r), axis=0, keepdims=True)  # [1, dk]
    g = jnp.where(ok, g, 1.0)
    lc = _cumsum(jnp.log(jnp.maximum(jnp.abs(g), tiny)), scan)
    lc = jnp.where(r >= first, jnp.nan, lc)
    cnt = _cumsum(jnp.where(g < 0, 1.0, 0.0).astype(F32), scan)
    sc = 1.0 - 2.0 * (cnt - 2.0 * jnp.floor(cnt * 0.5 + 0.25))
    lc_ref[...] = lc
    sc_ref[...] = sc.astype(sc_ref.dtype)
    r1, _ = cm.iotas(C, 1)
    tot = jnp.sum(jnp.where(r1 == C - 1, sc * jnp.exp(lc), 0.0), axis=0, keepdims=True)
    gc_ref[...] = cm.row_to_col(tot)


def _revcum_kernel(gg_ref, fin_ref, out_ref, *, NC, C, scan):
    # gg, out: [Lp, dk] f32; fin: [1, dk]. out[t] = fin + sum_{u >= t} gg[u], chunks in
    # reverse; within a chunk a reverse scan (GPU, `pallas_kernels._scan`) or a product with
    # the upper-triangular ones
    r, c = cm.iotas(C)

    def chunk(i, carry):
        sl = pl.ds((NC - 1 - i) * C, C)
        gg = gg_ref[sl, :]
        if scan:
            local = linear_scan(jnp.ones_like(gg), gg, reverse=True)[1]
        else:
            local = cm.mm(jnp.where(r <= c, 1.0, 0.0).astype(F32), gg)
        out_ref[sl, :] = local + carry
        return carry + jnp.sum(gg, axis=0, keepdims=True)

    lax.fori_loop(0, NC, chunk, fin_ref[...])


def _sweep_kernel(x_ref, y_ref, lg_ref, sg_ref, gc_ref, s0_ref, ss_ref, sT_ref, *, NC, C, dk,
                  scale, reverse):
    """The chunk-to-chunk sweep (grid (B, H, dv / BV)). Forward (`x, y = k, v`): the state
    entering every chunk, `S <- diag(G_C) S + (k * G_C / G)^T v`. Backward (`reverse`,
    `x, y = q, dO`): the adjoint after every chunk, `dS <- diag(G_C) dS + (scale q * G)^T dO`.
    x/lg/sg: [Lp, dk]; y: [Lp, BV]; gc: [NC * dk, 1]; s0, sT: [dk, BV] f32; ss: [NC * dk, BV]
    (`ss[c]`: the value before chunk c's update)."""
    dt = x_ref.dtype

    def chunk(i, st):
        c = NC - 1 - i if reverse else i
        ss_ref[pl.ds(c * dk, dk), :] = st.astype(ss_ref.dtype)
        sl = pl.ds(c * C, C)
        lg, sg = lg_ref[sl, :], sg_ref[sl, :].astype(F32)
        if reverse:
            f = scale * sg * jnp.exp(lg)
        else:
            last = c * C + C - 1
            f = _row(sg_ref, last) * sg * jnp.exp(_row(lg_ref, last) - lg)
        xf = x_ref[sl, :].astype(F32) * f
        return gc_ref[pl.ds(c * dk, dk), :] * st + cm.mm_tn(xf, y_ref[sl, :], dt)

    sT_ref[...] = lax.fori_loop(0, NC, chunk, s0_ref[...].astype(F32))


def _fast(lg_first, lg_last):
    """Whether a sub-block's diagonal 16 x 16 block may use rescaled products: its largest
    within-block decay `log(G_t0 / G_e)` (over this key tile) below `SPAN_LIMIT`, so every factor
    `G_t0 / G_s` of the block is at most e^SPAN_LIMIT (no overflow, f32 relative precision).
    A NaN span (a non-finite gate in the block) counts as steep on every backend (the Triton
    lowering's max would drop it): the column loop is exact for the rows before it."""
    ok = jnp.where(lg_first - lg_last < SPAN_LIMIT, 1, 0)
    return jnp.min(ok) == 1


def _a_kernel(q_ref, k_ref, lg_ref, sg_ref, a_ref, *, C, scale, blocks):
    # q/k/lg/sg: the chunk [C, dk]; a: this sub-block's rows of A [16, C] (input dtype).
    # blocks (GPU): a loop over the key blocks up to the diagonal, each a [16, 16] product
    # stored in place; else (TPU: no dynamic lane offsets) one [16, C] product, masked.
    dt = q_ref.dtype
    i = pl.program_id(2) % (C // SUB)
    t0 = i * SUB
    sl = pl.ds(t0, SUB)
    q = q_ref[sl, :].astype(F32) * scale
    lg, sg = lg_ref[sl, :], sg_ref[sl, :].astype(F32)
    lg0, sg0 = _row(lg_ref, t0), _row(sg_ref, t0)
    fast = _fast(lg0, _row(lg_ref, t0 + SUB - 1))
    nf = fast.astype(jnp.int32)  # the diagonal block joins the products on the fast path
    qf = q * (sg * sg0 * jnp.exp(jnp.minimum(lg - lg0, 0.0)))  # scale q_t G_t / G_t0
    r, c = cm.iotas(SUB)
    r1, _ = cm.iotas(SUB, 1)

    def k_factor(lg_s, sg_s):  # G_t0 / G_s: <= 1 before t0, <= e^SPAN_LIMIT in the block
        return sg_s.astype(F32) * sg0 * jnp.exp(jnp.minimum(lg0 - lg_s, SPAN_LIMIT))

    if blocks:
        a_ref[...] = jnp.zeros(a_ref.shape, a_ref.dtype)  # blocks after the diagonal stay 0

        def block(j, carry):  # key block j < i (fast: j <= i)
            bl = pl.ds(j * SUB, SUB)
            a = cm.mm_nt(qf, k_ref[bl, :].astype(F32) * k_factor(lg_ref[bl, :], sg_ref[bl, :]),
                         dt)
            a_ref[:, bl] = jnp.where(j * SUB + c <= t0 + r, a, 0.0).astype(a_ref.dtype)
            return carry

        lax.fori_loop(0, i + nf, block, 0)
    else:
        s_col, _ = cm.iotas(C, 1)
        fk = jnp.where(s_col < t0 + nf * SUB, k_factor(lg_ref[...], sg_ref[...]), 0.0)
        a = cm.mm_nt(qf, k_ref[...].astype(F32) * fk, dt)  # [16, C]
        rr, cc = cm.iotas(SUB, C)
        a = jnp.where(cc <= t0 + rr, a, 0.0)

    # steep gates: the diagonal block one key column at a time (exact for any gate), on a
    # [16, 16] tile stored in place (GPU) or in the [16, C] row block
    def column(j, acc):  # key t0 + j
        dec = _diag_decay(j, lg, sg, _row(lg_ref, t0 + j), _row(sg_ref, t0 + j))
        # masked after the sum too: a non-finite key (0 * NaN) stays in the rows t >= t0 + j
        col = jnp.where(r1 >= j,
                        jnp.sum(q * _row(k_ref, t0 + j) * dec, axis=1, keepdims=True), 0.0)
        return jnp.where(c == j, col, acc) if blocks else jnp.where(cc == t0 + j, col, acc)

    if blocks:
        @pl.when(jnp.logical_not(fast))
        def _():
            acc = lax.fori_loop(0, SUB, column, jnp.zeros((SUB, SUB), F32))
            a_ref[:, sl] = acc.astype(a_ref.dtype)
    else:
        a = lax.cond(fast, lambda a: a, lambda a: lax.fori_loop(0, SUB, column, a), a)
        a_ref[...] = a.astype(a_ref.dtype)


def _o_kernel(q_ref, lg_ref, sg_ref, h_ref, a_ref, v_ref, o_ref, *, scale):
    # one chunk: q/lg/sg [C, dk]; h [dk, BV] (entering state); a [C, C]; v, o [C, BV]
    dt = q_ref.dtype
    qg = q_ref[...].astype(F32) * (scale * sg_ref[...].astype(F32) * jnp.exp(lg_ref[...]))
    o = cm.mm(qg, h_ref[...], dt) + cm.causal_mm(a_ref[...], v_ref[...], dt)
    o_ref[...] = o.astype(o_ref.dtype)


def _dv_kernel(k_ref, v_ref, do_ref, lg_ref, sg_ref, a_ref, h_ref, dh_ref,
               da_ref, dv_ref, dqi_ref, dki_ref, *, C, scale):
    # one chunk and value tile: k/lg/sg [C, dk]; v, do, dv [C, BV]; a, da [C, C]; h
    # (entering), dh (adjoint after) [dk, BV]; dqi, dki [C, dk] f32: the inter-chunk parts of
    # dq (unscaled q) and dk. da, dqi, dki are partial sums over value tiles.
    dt = k_ref.dtype
    lg, sg = lg_ref[...], sg_ref[...].astype(F32)
    last = C - 1
    g_end = _row(sg_ref, last) * sg * jnp.exp(_row(lg_ref, last) - lg)
    do, v = do_ref[...], v_ref[...]
    r, c = cm.iotas(C)
    da_ref[...] = jnp.where(r >= c, cm.mm_nt(do, v, dt), 0.0)
    dv = cm.mm_tn(a_ref[...], do, dt) + cm.mm(k_ref[...].astype(F32) * g_end, dh_ref[...], dt)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    dqi_ref[...] = cm.mm_nt(do, h_ref[...], dt) * (scale * sg * jnp.exp(lg))
    dki_ref[...] = cm.mm_nt(v, dh_ref[...], dt) * g_end


def _dqk_kernel(q_ref, k_ref, lg_ref, sg_ref, da_ref, dqi_ref, dki_ref,
                dq_ref, dk_ref, gg_ref, *, C, scale, blocks):
    # q/k/lg/sg: the chunk [C, dk]; da: the chunk's dA [C, C] f32; dqi, dki, and the outputs
    # dq, dk (input dtype), gg = q dq - k dk (f32): this sub-block's rows [16, dk]. Only
    # [16, dk] tiles are live.
    dt = q_ref.dtype
    i = pl.program_id(2) % (C // SUB)
    t0 = i * SUB
    e = t0 + SUB - 1
    sl = pl.ds(t0, SUB)
    q_raw, k = q_ref[sl, :].astype(F32), k_ref[sl, :].astype(F32)
    q = q_raw * scale
    lg, sg = lg_ref[sl, :], sg_ref[sl, :].astype(F32)
    lg0, sg0 = _row(lg_ref, t0), _row(sg_ref, t0)
    lge, sge = _row(lg_ref, e), _row(sg_ref, e)
    fast = _fast(lg0, lge)
    nf = fast.astype(jnp.int32)  # the diagonal block joins the products on the fast path

    def earlier(bl):  # blocks j < i (fast: j <= i), rescaled at t0: dq_t += dA k_s G_t0 / G_s
        fk = sg_ref[bl, :].astype(F32) * sg0 * jnp.exp(
            jnp.minimum(lg0 - lg_ref[bl, :], SPAN_LIMIT))
        return cm.mm(da_ref[sl, bl], k_ref[bl, :].astype(F32) * fk, dt)

    def later(bl):  # blocks j > i (fast: j >= i), rescaled at e: dk_s += dA q_t G_t / G_e
        fq = sg_ref[bl, :].astype(F32) * sge * jnp.exp(
            jnp.minimum(lg_ref[bl, :] - lge, SPAN_LIMIT))
        return cm.mm_tn(da_ref[bl, sl], q_ref[bl, :].astype(F32) * (scale * fq), dt)

    zeros = jnp.zeros((SUB, q.shape[1]), F32)
    if blocks:  # GPU: only the contributing blocks (dynamic bounds)
        step = lambda f: lambda j, x: x + f(pl.ds(j * SUB, SUB))
        dq = lax.fori_loop(0, i + nf, step(earlier), zeros)
        dk = lax.fori_loop(i + 1 - nf, C // SUB, step(later), zeros)
    else:  # TPU: static blocks (no dynamic lane offsets into dA), masked
        dq = dk = zeros
        for j in range(C // SUB):
            bl = pl.ds(j * SUB, SUB)
            dq = dq + jnp.where(j < i + nf, earlier(bl), 0.0)
            dk = dk + jnp.where(j >= i + 1 - nf, later(bl), 0.0)
    dq = dq * (sg * sg0 * jnp.exp(jnp.minimum(lg - lg0, 0.0)))  # (G_t / G_t0)
    dk = dk * (sg * sge * jnp.exp(jnp.minimum(lge - lg, 0.0)))  # (G_e / G_s)
    r, _ = cm.iotas(SUB, 1)

    def column(j, carry):  # key t0 + j of the diagonal block
        dq, dk = carry
        s = t0 + j
        w = da_ref[sl, pl.ds(s, 1)] * _diag_decay(j, lg, sg, _row(lg_ref, s), _row(sg_ref, s))
        dk_row = jnp.sum(w * q, axis=0, keepdims=True)  # [1, dk]
        return dq + w * _row(k_ref, s), dk + jnp.where(r == j, dk_row, 0.0)

    # steep gates: the diagonal block one key column at a time (exact for any gate)
    dq, dk = lax.cond(fast, lambda c: c, lambda c: lax.fori_loop(0, SUB, column, c), (dq, dk))
    dq = dq * scale + dqi_ref[...]
    dk = dk + dki_ref[...]
    dq_ref[...] = dq.astype(dq_ref.dtype)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    gg_ref[...] = q_raw * dq - k * dk


# ------------------------------------------------------------------------------------------
# pallas_call wrappers. cfg = (C, scale, interpret, platform, bv, num_warps, layout, bvc)
# ------------------------------------------------------------------------------------------
def _use_scan(platform):
    """Cumulative sums by Triton's scan on GPU (`jnp.cumsum` and `pallas_kernels._scan` lower
    to it); triangular products elsewhere (TPU)."""
    return platform == "gpu" and SCAN_AVAILABLE


def _key_tile(dk, platform, preferred=64):
    """Key-dim tile: `preferred` on GPU (fewer registers per program; None: the full dk), the
    full dk elsewhere (TPU lane rule)."""
    return dk if preferred is None else cm.value_tile(dk, platform, preferred)


# Warps per program when the caller leaves `num_warps` None (per-kernel profile, H200,
# `python3 -m experiments.bench.stages --op gla-chunk --warps 2,4,8`, ms at (8, 2048, 16, 128)):
# the state sweeps 0.43 / 0.50 at 4 warps -> 0.40 / 0.44 at 8; dV/dA 1.02 -> 0.84 at 8; the
# gate-gradient scan 0.27 -> 0.22 at 2; the rest fastest at 4 (scores 0.70 vs 1.22 at 8).
WARPS = {"sweep": 8, "dv": 8, "dgate": 2}


def _params(platform, n, num_warps, num_stages=1, kernel=None):
    nw = WARPS.get(kernel, 4) if num_warps is None else num_warps
    return cm.compiler_params(platform, n, num_warps=nw, num_stages=num_stages)


def _sweep(x, y, lgc, sgc, gc, s0, cfg, reverse):
    """`(ss [B, H, NC * dk, dv] (input dtype), final [B, H, dk, dv] f32)` of `_sweep_kernel`."""
    C, scale, interpret, platform, bv, num_warps, layout, _ = cfg
    B, H, Lp, dk = cm.seq_dims(x, layout)
    dv = cm.seq_dims(y, layout)[-1]
    NC = Lp // C
    sk = cm.seq_spec(B, H, Lp, dk, Lp, dk, layout, lambda b, h, j: (b, h, 0, 0))
    sv = cm.seq_spec(B, H, Lp, dv, Lp, bv, layout, lambda b, h, j: (b, h, 0, j))
    gcs = cm.block_spec((B, H, NC * dk, 1), (None, None, NC * dk, 1),
                        lambda b, h, j: (b, h, 0, 0))
    state = cm.block_spec((B, H, dk, dv), (None, None, dk, bv), lambda b, h, j: (b, h, 0, j))
    states = cm.block_spec((B, H, NC * dk, dv), (None, None, NC * dk, bv),
                           lambda b, h, j: (b, h, 0, j))
    return cm.pallas_call(
        platform,
        functools.partial(_sweep_kernel, NC=NC, C=C, dk=dk, scale=scale, reverse=reverse),
        grid=(B, H, dv // bv),  # all parallel
        in_specs=[sk, sv, sk, sk, gcs, state],
        out_specs=[states, state],
        out_shape=[jax.ShapeDtypeStruct((B, H, NC * dk, dv), x.dtype),
                   jax.ShapeDtypeStruct((B, H, dk, dv), F32)],
        # 3 pipeline stages of the chunk loads for 16-bit inputs; f32 tiles would not fit the
        # shared memory three times over
        interpret=interpret,
        compiler_params=_params(platform, 3, num_warps, 1 if x.dtype == F32 else 3, "sweep"),
        name="lrnn_gla_chunk_dh" if reverse else "lrnn_gla_chunk_h",
    )(x, y, lgc, sgc, gc, s0)


# Key-dim tiles on GPU (a Triton program's registers): the score kernel sums partial products
# over key tiles (added in the wrapper); dq, dk of a key tile only need that tile. A sweep knob
# of `experiments.bench.stages --key-tile`.
KEY_TILE = {"scores": 64, "dqk": None}


def _sub_grid_specs(B, H, Lp, dk, bk, C, layout):
    """Grid (B, H, Lp / 16, dk / bk): the sub-block's chunk `[C, bk]`, its own rows
    `[16, bk]`, the chunk's `[C, C]` score block."""
    n = C // SUB
    ck = cm.seq_spec(B, H, Lp, dk, C, bk, layout, lambda b, h, i, j: (b, h, i // n, j))
    sk = cm.seq_spec(B, H, Lp, dk, SUB, bk, layout, lambda b, h, i, j: (b, h, i, j))
    cc = cm.block_spec((B, H, Lp, C), (None, None, C, C), lambda b, h, i, j: (b, h, i // n, 0))
    return ck, sk, cc


def _scores(qi, ki, lgc, sgc, cfg):
    """A `[B, H, Lp, C]` in the input dtype (rows of each chunk's `[C, C]` block)."""
    C, scale, interpret, platform, _, num_warps, layout, _ = cfg
    B, H, Lp, dk = cm.seq_dims(ki, layout)
    bk = _key_tile(dk, platform, KEY_TILE["scores"])
    nk = dk // bk
    ck, _, _ = _sub_grid_specs(B, H, Lp, dk, bk, C, layout)
    part = cm.block_spec((nk, B, H, Lp, C), (None, None, None, SUB, C),
                         lambda b, h, i, j: (j, b, h, i, 0))
    a = cm.pallas_call(
        platform, functools.partial(_a_kernel, C=C, scale=scale, blocks=platform == "gpu"),
        grid=(B, H, Lp // SUB, nk),  # all parallel
        in_specs=[ck, ck, ck, ck],
        out_specs=part,
        out_shape=jax.ShapeDtypeStruct((nk, B, H, Lp, C), qi.dtype if nk == 1 else F32),
        interpret=interpret, compiler_params=_params(platform, 4, num_warps, kernel="scores"),
        name="lrnn_gla_chunk_a",
    )(qi, ki, lgc, sgc)
    return a[0] if nk == 1 else a.sum(0).astype(qi.dtype)


def _outputs(qi, lgc, sgc, hs, a, vi, cfg):
    C, scale, interpret, platform, _, num_warps, layout, bvc = cfg
    B, H, Lp, dk = cm.seq_dims(qi, layout)
    dv = cm.seq_dims(vi, layout)[-1]
    ck = cm.seq_spec(B, H, Lp, dk, C, dk, layout, lambda b, h, c, j: (b, h, c, 0))
    cv = cm.seq_spec(B, H, Lp, dv, C, bvc, layout, lambda b, h, c, j: (b, h, c, j))
    st = cm.block_spec((B, H, Lp // C * dk, dv), (None, None, dk, bvc),
                       lambda b, h, c, j: (b, h, c, j))
    cc = cm.block_spec((B, H, Lp, C), (None, None, C, C), lambda b, h, c, j: (b, h, c, 0))
    return cm.pallas_call(
        platform, functools.partial(_o_kernel, scale=scale),
        grid=(B, H, Lp // C, dv // bvc),  # all parallel
        in_specs=[ck, ck, ck, st, cc, cv],
        out_specs=cv,
        out_shape=jax.ShapeDtypeStruct(cm.seq_shape(B, H, Lp, dv, layout), qi.dtype),
        interpret=interpret, compiler_params=_params(platform, 4, num_warps, kernel="o"),
        name="lrnn_gla_chunk_o",
    )(qi, lgc, sgc, hs, a, vi)


def _dv(ki, vi, do, lgc, sgc, a, hs, dhs, cfg):
    """`(dA, dv, dq inter, dk inter)`; over value tiles of width bvd, dA and the inter parts
    are partial sums (added here). bvd = dv except for f32 on GPU (32: shared memory)."""
    C, scale, interpret, platform, _, num_warps, layout, _ = cfg
    B, H, Lp, dk = cm.seq_dims(ki, layout)
    dv = cm.seq_dims(vi, layout)[-1]
    bvd = min(dv, 32) if (platform == "gpu" and ki.dtype == F32) else dv
    nv = dv // bvd
    ck = cm.seq_spec(B, H, Lp, dk, C, dk, layout, lambda b, h, c, j: (b, h, c, 0))
    cv = cm.seq_spec(B, H, Lp, dv, C, bvd, layout, lambda b, h, c, j: (b, h, c, j))
    pk = cm.seq_spec(B, H, Lp, dk, C, dk, layout, lambda b, h, c, j: (j, b, h, c, 0),
                     lead=(nv,))
    st = cm.block_spec((B, H, Lp // C * dk, dv), (None, None, dk, bvd),
                       lambda b, h, c, j: (b, h, c, j))
    cc = cm.block_spec((B, H, Lp, C), (None, None, C, C), lambda b, h, c, j: (b, h, c, 0))
    pc = cm.block_spec((nv, B, H, Lp, C), (None, None, None, C, C),
                       lambda b, h, c, j: (j, b, h, c, 0))
    pshape = cm.seq_shape(B, H, Lp, dk, layout, (nv,))
    da, dv_, dqi, dki = cm.pallas_call(
        platform, functools.partial(_dv_kernel, C=C, scale=scale),
        grid=(B, H, Lp // C, nv),  # all parallel
        in_specs=[ck, cv, cv, ck, ck, cc, st, st],
        out_specs=[pc, cv, pk, pk],
        out_shape=[jax.ShapeDtypeStruct((nv, B, H, Lp, C), F32),
                   jax.ShapeDtypeStruct(cm.seq_shape(B, H, Lp, dv, layout), vi.dtype),
                   jax.ShapeDtypeStruct(pshape, F32), jax.ShapeDtypeStruct(pshape, F32)],
        interpret=interpret, compiler_params=_params(platform, 4, num_warps, kernel="dv"),
        name="lrnn_gla_chunk_dv",
    )(ki, vi, do, lgc, sgc, a, hs, dhs)
    return da.sum(0), dv_, dqi.sum(0), dki.sum(0)


def _dqk(qi, ki, lgc, sgc, da, dqi, dki, cfg):
    C, scale, interpret, platform, _, num_warps, layout, _ = cfg
    B, H, Lp, dk = cm.seq_dims(ki, layout)
    bk = _key_tile(dk, platform, KEY_TILE["dqk"])
    ck, sk, cc = _sub_grid_specs(B, H, Lp, dk, bk, C, layout)
    shape = cm.seq_shape(B, H, Lp, dk, layout)
    return cm.pallas_call(
        platform, functools.partial(_dqk_kernel, C=C, scale=scale,
                                    blocks=platform == "gpu"),
        grid=(B, H, Lp // SUB, dk // bk),  # all parallel
        in_specs=[ck, ck, ck, ck, cc, sk, sk],
        out_specs=[sk, sk, sk],
        out_shape=[jax.ShapeDtypeStruct(shape, qi.dtype), jax.ShapeDtypeStruct(shape, ki.dtype),
                   jax.ShapeDtypeStruct(shape, F32)],
        interpret=interpret, compiler_params=_params(platform, 4, num_warps, kernel="dqk"),
        name="lrnn_gla_chunk_dqk",
    )(qi, ki, lgc, sgc, da, dqi, dki)


def prep_gates(g, cfg):
    """Per-key gates `g` (a sequence array, f32) -> within-chunk cumulative log|g| (f32) and
    sign (bf16: +-1 is exact, half the traffic) in the same layout, and each chunk's total
    decay as a column `[B, H, NC * dk, 1]` f32."""
    C, _, interpret, platform, _, num_warps, layout, _ = cfg
    B, H, Lp, dk = cm.seq_dims(g, layout)
    NC = Lp // C
    bk = _key_tile(dk, platform)
    nk = dk // bk
    ck = cm.seq_spec(B, H, Lp, dk, C, bk, layout, lambda b, h, c, j: (b, h, c, j))
    col = cm.block_spec((B, H, NC * dk, 1), (None, None, bk, 1),
                        lambda b, h, c, j: (b, h, c * nk + j, 0))
    return cm.pallas_call(
        platform, functools.partial(_prep_kernel, tiny=cm.GATE_FLOOR, scan=_use_scan(platform)),
        grid=(B, H, NC, nk),  # all parallel
        in_specs=[ck],
        out_specs=[ck, ck, col],
        out_shape=[jax.ShapeDtypeStruct(g.shape, F32),
                   jax.ShapeDtypeStruct(g.shape, jnp.bfloat16),
                   jax.ShapeDtypeStruct((B, H, NC * dk, 1), F32)],
        interpret=interpret, compiler_params=_params(platform, 4, num_warps, kernel="gates"),
        name="lrnn_gla_chunk_gates",
    )(g)


def _gate_grad(gg, ht, dht, cfg):
    """Gradient of the per-token log|g|: `fin + sum_{u >= t} gg_u` with `fin =
    rowsum(S_T * dS_T)` (per key), as a sequence array."""
    C, _, interpret, platform, _, num_warps, layout, _ = cfg
    B, H, Lp, dk = cm.seq_dims(gg, layout)
    fin = jnp.sum(ht * dht, axis=-1)[:, :, None, :]  # [B, H, 1, dk]
    bk = _key_tile(dk, platform, 32)
    sk = cm.seq_spec(B, H, Lp, dk, Lp, bk, layout, lambda b, h, j: (b, h, 0, j))
    return cm.pallas_call(
        platform, functools.partial(_revcum_kernel, NC=Lp // C, C=C,
                                    scan=_use_scan(platform)),
        grid=(B, H, dk // bk),  # all parallel
        in_specs=[sk, cm.block_spec((B, H, 1, dk), (None, None, 1, bk),
                                    lambda b, h, j: (b, h, 0, j))],
        out_specs=sk,
        out_shape=jax.ShapeDtypeStruct(gg.shape, F32),
        interpret=interpret, compiler_params=_params(platform, 3, num_warps, kernel="dgate"),
        name="lrnn_gla_chunk_dgate",
    )(gg, fin)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def core(qi, ki, vi, g, h0, cfg):
    """`(o, final state)` from sequence arrays in the layout cfg[6] (with the per-key gates `g`,
    f32, padded with 1); cfg = (C, scale, interpret, platform, bv, num_warps, layout, bvc)."""
    (o, ht), _ = _core_fwd(qi, ki, vi, g, h0, cfg)
    return o, ht


def _core_fwd(qi, ki, vi, g, h0, cfg):
    lgc, sgc, gc = prep_gates(g, cfg)
    hs, ht = _sweep(ki, vi, lgc, sgc, gc, h0, cfg, reverse=False)
    a = _scores(qi, ki, lgc, sgc, cfg)
    o = _outputs(qi, lgc, sgc, hs, a, vi, cfg)
    return (o, ht), (qi, ki, vi, g, lgc, sgc, gc, hs, a, ht)


def _core_bwd(cfg, res, cts):
    qi, ki, vi, g, lgc, sgc, gc, hs, a, ht = res
    do, dht = cts
    dht = dht.astype(F32)
    dhs, dh0 = _sweep(qi, do.astype(qi.dtype), lgc, sgc, gc, dht, cfg, reverse=True)
    da, dv, dqi, dki = _dv(ki, vi, do.astype(vi.dtype), lgc, sgc, a, hs, dhs, cfg)
    dq, dk, gg = _dqk(qi, ki, lgc, sgc, da, dqi, dki, cfg)
    dla = _gate_grad(gg, ht, dht, cfg)
    # log|g| -> g: d/dg = 1 / g where |g| > the floor, else 0 (as jnp.maximum's gradient)
    dg = jnp.where(jnp.abs(g) > cm.GATE_FLOOR, dla / jnp.where(g == 0, 1.0, g), 0.0)
    return dq, dk, dv, dg, dh0


core.defvjp(_core_fwd, _core_bwd)
