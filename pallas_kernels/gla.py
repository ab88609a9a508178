"""Gated linear attention (gates per head or per key, signed) as a chunkwise Pallas kernel.

`S_t = diag(g_t) S_{t-1} + k_t v_t^T`, `o_t = S_t^T (scale q_t)`, gates in [-1, 1].

The state is carried in f32 across sub-blocks of c = 16 tokens; inside a sub-block, with
within-sub-block cumulative gates `G_t` (per key), `Gam[t, s, i] = G_ti / G_si` (s <= t):
  P[t, s] = sum_i q_ti k_si Gam[t, s, i]                       (elementwise over [c, c, dk])
  O = (q G) S0 + P V,   S_c = diag(G_c) S0 + (k G_c / G)^T V
Gates are kept as cumulative log|g| plus a sign, and every exponent taken is <= 0, so gates
near 0, near 1 and negative are stable. The per-key decay has no separable form that stays
bounded for arbitrary gates, hence the elementwise `[c, c, dk]` block (as fla's chunk_gla does
on its diagonal sub-blocks).

Forward kernel: grid `(B, H, dv / BV)`, all axes parallel; the loop over chunks of C tokens
(C a multiple of 16) and their sub-blocks is inside, and the state at every chunk start is
stored (f32) for the backward. Backward kernel: same grid (parallel); per chunk in reverse it
reloads the chunk state, replays the sub-blocks forward for the `dO S^T` part of dq, then runs
them in reverse with the f32 adjoint state. dq and dk are partial sums over value tiles (added
in the wrapper). The gate gradient is computed outside the kernel:
`d log|g_u| = sum_{t >= u} (q_t dq_t - k_t dk_t) + rowsum(S_T * dS_T)` (per key).

A NaN or inf reaches only later outputs and states, as in a token loop: the causal product
`P V` goes through `_common.causal_mm`, and `P` is masked after its sum over keys.

`split_intra=True` (the default for 16-bit inputs when `chunk_parallel` is off) moves the
state-free work (`P V`, and in the backward `P^T dO` and the intra-block parts of dq, dk) into
kernels with grid `(B, H, T / 16)`, all parallel, leaving only state matmuls on the sequential
path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common as cm

F32 = jnp.float32
SUB = 16  # tokens per sub-block


def _sub_common(j, q_ref, k_ref, v_ref, lg_ref, sg_ref, scale, intra=True):
    sl = pl.ds(j * SUB, SUB)
    q = q_ref[sl, :].astype(F32) * scale  # [c, dk]
    k = k_ref[sl, :].astype(F32)
    v = v_ref[sl, :]
    lg = lg_ref[sl, :]  # [c, dk] cumulative log|g| within the sub-block
    sg = sg_ref[sl, :]  # [c, dk] cumulative sign
    last = pl.ds(j * SUB + SUB - 1, 1)
    lg_last, sg_last = lg_ref[last, :], sg_ref[last, :]  # [1, dk]
    g = sg * jnp.exp(lg)
    g_to_end = sg_last * sg * jnp.exp(lg_last - lg)
    if not intra:
        return dict(q=q, k=k, v=v, g=g, g_to_end=g_to_end)
    r, c = cm.iotas(SUB)
    mask3 = (r >= c)[:, :, None]
    decay = jnp.exp(jnp.minimum(lg[:, None, :] - lg[None, :, :], 0.0))
    gam3 = jnp.where(mask3, sg[:, None, :] * sg[None, :, :] * decay, 0.0)  # [c(t), c(s), dk]
    # masked again after the sum: a non-finite k_s (0 * NaN) stays in the rows t >= s
    p = jnp.where(r >= c, jnp.sum(q[:, None, :] * k[None, :, :] * gam3, axis=-1), 0.0)
    return dict(q=q, k=k, v=v, g=g, g_to_end=g_to_end, gam3=gam3, p=p, mask=r >= c)


def _intra_fwd_kernel(q_ref, k_ref, v_ref, lg_ref, sg_ref, o_ref, *, scale):
    """One sub-block's state-free part `P V` (split mode). Grid (B, H, NSB): all parallel."""
    x = _sub_common(0, q_ref, k_ref, v_ref, lg_ref, sg_ref, scale)
    o_ref[...] = cm.causal_mm(x["p"], x["v"], q_ref.dtype)


def _intra_bwd_kernel(q_ref, k_ref, v_ref, lg_ref, sg_ref, do_ref, dq_ref, dk_ref, dv_ref,
                      *, scale):
    """One sub-block's state-free gradient parts (split mode). Grid (B, H, NSB): parallel."""
    dt = q_ref.dtype
    x = _sub_common(0, q_ref, k_ref, v_ref, lg_ref, sg_ref, scale)
    do = do_ref[...].astype(F32)
    dp = jnp.where(x["mask"], cm.mm_nt(do, x["v"], dt), 0.0)  # [c, c]
    w3 = dp[:, :, None] * x["gam3"]
    dq_ref[...] = jnp.sum(w3 * x["k"][None, :, :], axis=1) * scale
    dk_ref[...] = jnp.sum(w3 * x["q"][:, None, :], axis=0)
    dv_ref[...] = cm.mm_tn(x["p"], do, dt)


def _fwd_kernel(*refs, NC, n_sub, dk, scale, split):
    # q/k/lg/sg_ref: [L, dk]; v_ref, o_ref: [L, BV]; gl_ref: [NSB * dk, 1] decay of each
    # sub-block as a column; oi_ref (split mode): [L, BV] f32 precomputed P V;
    # h0/ht: [dk, BV] f32; hs: [NC * dk, BV] f32.
    if split:
        q_ref, k_ref, v_ref, lg_ref, sg_ref, gl_ref, oi_ref, h0_ref, o_ref, hs_ref, ht_ref = refs
    else:
        q_ref, k_ref, v_ref, lg_ref, sg_ref, gl_ref, h0_ref, o_ref, hs_ref, ht_ref = refs
    dt = q_ref.dtype

    def sub(j, s):
        x = _sub_common(j, q_ref, k_ref, v_ref, lg_ref, sg_ref, scale, intra=not split)
        o_in = oi_ref[pl.ds(j * SUB, SUB), :] if split else cm.causal_mm(x["p"], x["v"], dt)
        o = cm.mm(x["q"] * x["g"], s, dt) + o_in
        o_ref[pl.ds(j * SUB, SUB), :] = o.astype(o_ref.dtype)
        g_col = gl_ref[pl.ds(j * dk, dk), :]  # [dk, 1]
        return g_col * s + cm.mm_tn(x["k"] * x["g_to_end"], x["v"], dt)

    def chunk(c, s):
        hs_ref[pl.ds(c * dk, dk), :] = s
        return lax.fori_loop(c * n_sub, (c + 1) * n_sub, sub, s)

    ht_ref[...] = lax.fori_loop(0, NC, chunk, h0_ref[...].astype(F32))


def _bwd_kernel(q_ref, k_ref, v_ref, lg_ref, sg_ref, gl_ref, hs_ref, do_ref, dht_ref,
                dq_ref, dk_ref, dv_ref, dh0_ref, *, NC, n_sub, dk, scale, split):
    dt = q_ref.dtype

    def chunk(i, ds):
        c = NC - 1 - i

        def replay(j, s):  # forward through the sub-blocks: the S0 part of dq
            sl = pl.ds(j * SUB, SUB)
            lg, sg = lg_ref[sl, :], sg_ref[sl, :]
            do = do_ref[sl, :].astype(F32)
            dq_ref[sl, :] = sg * jnp.exp(lg) * cm.mm_nt(do, s, dt)
            last = pl.ds(j * SUB + SUB - 1, 1)
            g_to_end = sg_ref[last, :] * sg * jnp.exp(lg_ref[last, :] - lg)
            k = k_ref[sl, :].astype(F32)
            g_col = gl_ref[pl.ds(j * dk, dk), :]
            return g_col * s + cm.mm_tn(k * g_to_end, v_ref[sl, :], dt)

        lax.fori_loop(c * n_sub, (c + 1) * n_sub, replay, hs_ref[pl.ds(c * dk, dk), :])

        def back(jj, ds):
            j = (c + 1) * n_sub - 1 - jj
            sl = pl.ds(j * SUB, SUB)
            x = _sub_common(j, q_ref, k_ref, v_ref, lg_ref, sg_ref, scale, intra=not split)
            do = do_ref[sl, :].astype(F32)
            kend = x["k"] * x["g_to_end"]
            dv = cm.mm(kend, ds, dt)
            dk_ = x["g_to_end"] * cm.mm_nt(x["v"], ds, dt)
            if split:  # the state-free parts come from _intra_bwd_kernel
                dq_ref[sl, :] = dq_ref[sl, :] * scale
            else:
                dv = dv + cm.mm_tn(x["p"], do, dt)
                dp = jnp.where(x["mask"], cm.mm_nt(do, x["v"], dt), 0.0)  # [c, c]
                w3 = dp[:, :, None] * x["gam3"]
                dq_in = jnp.sum(w3 * x["k"][None, :, :], axis=1)  # [c, dk]
                dk_ = dk_ + jnp.sum(w3 * x["q"][:, None, :], axis=0)  # [c, dk]
                dq_ref[sl, :] = (dq_ref[sl, :] + dq_in) * scale
            dk_ref[sl, :] = dk_
            dv_ref[sl, :] = dv.astype(dv_ref.dtype)
            g_col = gl_ref[pl.ds(j * dk, dk), :]
            return g_col * ds + cm.mm_tn(x["q"] * x["g"], do, dt)

        return lax.fori_loop(0, n_sub, back, ds)

    dh0_ref[...] = lax.fori_loop(0, NC, chunk, dht_ref[...].astype(F32))


def _specs(B, H, Lp, dk, dv, bv, NC, NSB):
    """Block specs of both kernels; grid (B, H, dv / bv), all parallel."""
    seq_k = cm.block_spec((B, H, Lp, dk), (None, None, Lp, dk), lambda b, h, j: (b, h, 0, 0))
    seq_v = cm.block_spec((B, H, Lp, dv), (None, None, Lp, bv), lambda b, h, j: (b, h, 0, j))
    gl = cm.block_spec((B, H, NSB * dk, 1), (None, None, NSB * dk, 1),
                       lambda b, h, j: (b, h, 0, 0))
    state = cm.block_spec((B, H, dk, dv), (None, None, dk, bv), lambda b, h, j: (b, h, 0, j))
    states = cm.block_spec((B, H, NC * dk, dv), (None, None, NC * dk, bv),
                           lambda b, h, j: (b, h, 0, j))
    nv = dv // bv
    part_k = cm.block_spec((nv, B, H, Lp, dk), (None, None, None, Lp, dk),
                           lambda b, h, j: (j, b, h, 0, 0))
    return seq_k, seq_v, gl, state, states, part_k


def _prep_gates(la, sa):
    """Per-token log|g|, sign `[B, H, Lp, dk]` -> within-sub-block cumulatives and decays."""
    B, H, Lp, dk = la.shape
    NSB = Lp // SUB
    lc = jnp.cumsum(la.reshape(B, H, NSB, SUB, dk), axis=3)
    neg = jnp.cumsum((sa < 0).astype(jnp.int32).reshape(B, H, NSB, SUB, dk), axis=3) % 2
    sc = 1.0 - 2.0 * neg.astype(F32)
    gl = (sc[:, :, :, -1] * jnp.exp(lc[:, :, :, -1])).reshape(B, H, NSB * dk, 1)
    return lc.reshape(B, H, Lp, dk), sc.reshape(B, H, Lp, dk), gl


def _sub_specs(B, H, Lp, dk, dv):
    """Blocks of one sub-block (split mode); grid (B, H, NSB), all parallel."""
    sk = cm.block_spec((B, H, Lp, dk), (None, None, SUB, dk), lambda b, h, j: (b, h, j, 0))
    sv = cm.block_spec((B, H, Lp, dv), (None, None, SUB, dv), lambda b, h, j: (b, h, j, 0))
    return sk, sv


def _kernel_intra_fwd(qi, ki, vi, lgc, sgc, cfg):
    _, scale, interpret, platform, _, num_warps, _ = cfg
    B, H, Lp, dk = ki.shape
    dv = vi.shape[-1]
    sk, sv = _sub_specs(B, H, Lp, dk, dv)
    return cm.pallas_call(
        platform,
        functools.partial(_intra_fwd_kernel, scale=scale),
        grid=(B, H, Lp // SUB),  # all parallel
        in_specs=[sk, sk, sv, sk, sk],
        out_specs=sv,
        out_shape=jax.ShapeDtypeStruct((B, H, Lp, dv), F32),
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=1),
        name="lrnn_gla_intra_fwd",
    )(qi, ki, vi, lgc, sgc)


def _kernel_intra_bwd(qi, ki, vi, lgc, sgc, do, cfg):
    _, scale, interpret, platform, _, num_warps, _ = cfg
    B, H, Lp, dk = ki.shape
    dv = vi.shape[-1]
    sk, sv = _sub_specs(B, H, Lp, dk, dv)
    return cm.pallas_call(
        platform,
        functools.partial(_intra_bwd_kernel, scale=scale),
        grid=(B, H, Lp // SUB),  # all parallel
        in_specs=[sk, sk, sv, sk, sk, sv],
        out_specs=[sk, sk, sv],
        out_shape=[jax.ShapeDtypeStruct((B, H, Lp, dk), F32),
                   jax.ShapeDtypeStruct((B, H, Lp, dk), F32),
                   jax.ShapeDtypeStruct((B, H, Lp, dv), F32)],
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=1),
        name="lrnn_gla_intra_bwd",
    )(qi, ki, vi, lgc, sgc, do)


def _kernel_fwd(qi, ki, vi, lgc, sgc, gl, oi, h0, cfg):
    C, scale, interpret, platform, bv, num_warps, split = cfg
    B, H, Lp, dk = ki.shape
    dv = vi.shape[-1]
    NC, NSB = Lp // C, Lp // SUB
    seq_k, seq_v, gls, state, states, _ = _specs(B, H, Lp, dk, dv, bv, NC, NSB)
    return cm.pallas_call(
        platform,
        functools.partial(_fwd_kernel, NC=NC, n_sub=C // SUB, dk=dk, scale=scale, split=split),
        grid=(B, H, dv // bv),  # all parallel
        in_specs=[seq_k, seq_k, seq_v, seq_k, seq_k, gls] + ([seq_v] if split else []) + [state],
        out_specs=[seq_v, states, state],
        out_shape=[
            jax.ShapeDtypeStruct((B, H, Lp, dv), qi.dtype),
            jax.ShapeDtypeStruct((B, H, NC * dk, dv), F32),
            jax.ShapeDtypeStruct((B, H, dk, dv), F32),
        ],
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=1),
        name="lrnn_gla_fwd",
    )(qi, ki, vi, lgc, sgc, gl, *([oi] if split else []), h0)


def _kernel_bwd(qi, ki, vi, lgc, sgc, gl, hs, do, dht, cfg):
    C, scale, interpret, platform, bv, num_warps, split = cfg
    B, H, Lp, dk = ki.shape
    dv = vi.shape[-1]
    NC, NSB = Lp // C, Lp // SUB
    nv = dv // bv
    seq_k, seq_v, gls, state, states, part_k = _specs(B, H, Lp, dk, dv, bv, NC, NSB)
    dq, dk_, dv_, dh0 = cm.pallas_call(
        platform,
        functools.partial(_bwd_kernel, NC=NC, n_sub=C // SUB, dk=dk, scale=scale, split=split),
        grid=(B, H, nv),  # all parallel
        in_specs=[seq_k, seq_k, seq_v, seq_k, seq_k, gls, states, seq_v, state],
        out_specs=[part_k, part_k, seq_v, state],
        out_shape=[
            jax.ShapeDtypeStruct((nv, B, H, Lp, dk), F32),
            jax.ShapeDtypeStruct((nv, B, H, Lp, dk), F32),
            jax.ShapeDtypeStruct((B, H, Lp, dv), F32),
            jax.ShapeDtypeStruct((B, H, dk, dv), F32),
        ],
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 3, num_warps=num_warps, num_stages=1),
        name="lrnn_gla_bwd",
    )(qi, ki, vi, lgc, sgc, gl, hs, do, dht)
    dq, dk_ = dq.sum(0), dk_.sum(0)
    if split:
        dq_in, dk_in, dv_in = _kernel_intra_bwd(qi, ki, vi, lgc, sgc, do, cfg)
        dq, dk_, dv_ = dq + dq_in, dk_ + dk_in, dv_ + dv_in
    return dq, dk_, dv_, dh0


def _forward(qi, ki, vi, la, sa, h0, cfg):
    lgc, sgc, gl = _prep_gates(la, sa)
    oi = _kernel_intra_fwd(qi, ki, vi, lgc, sgc, cfg) if cfg[6] else None
    o, hs, ht = _kernel_fwd(qi, ki, vi, lgc, sgc, gl, oi, h0, cfg)
    return o, hs, ht, (lgc, sgc, gl)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _core(qi, ki, vi, la, sa, h0, cfg):
    o, _, ht, _ = _forward(qi, ki, vi, la, sa, h0, cfg)
    return o, ht


def _core_fwd(qi, ki, vi, la, sa, h0, cfg):
    o, hs, ht, (lgc, sgc, gl) = _forward(qi, ki, vi, la, sa, h0, cfg)
    return (o, ht), (qi, ki, vi, lgc, sgc, gl, hs, ht, sa)


def _core_bwd(cfg, res, cts):
    qi, ki, vi, lgc, sgc, gl, hs, ht, sa = res
    do, dht = cts
    dht = dht.astype(F32)
    dq, dk, dv, dh0 = _kernel_bwd(qi, ki, vi, lgc, sgc, gl, hs, do, dht, cfg)
    return (dq.astype(qi.dtype), dk.astype(ki.dtype), dv.astype(vi.dtype),
            gate_grad(qi, dq, ki, dk, ht, dht), jnp.zeros_like(sa), dh0)


def gate_grad(qi, dq, ki, dk, ht, dht):
    """Gradient of the per-key log|gate| `[B, H, Lp, dk]`:
    `d log|g_u| = sum_{t >= u} (q_t dq_t - k_t dk_t) + rowsum(S_T * dS_T)`."""
    per_t = qi.astype(F32) * dq - ki.astype(F32) * dk  # [B, H, Lp, dk]
    rev = jnp.flip(jnp.cumsum(jnp.flip(per_t, 2), 2), 2)
    return rev + jnp.sum(ht * dht, axis=-1)[:, :, None, :]


_core.defvjp(_core_fwd, _core_bwd)


def gated_linear_attention(q, k, v, gate, *, initial_state=None, scale=1.0, chunk_size=64,
                           interpret=None, block_v=None, num_warps=None, split_intra=None,
                           chunk_parallel=None, block_v_chunk=None, _target=None, _layout=None):
    """Gated linear attention, chunkwise Pallas kernels (forward and backward).

    Args:
      q: `[B, T, H, dk]` queries (not scaled implicitly).
      k: `[B, T, H, dk]` keys.
      v: `[B, T, H, dv]` values.
      gate: `[B, T, H]` (per head) or `[B, T, H, dk]` (per key), values in [-1, 1].
      initial_state: `[B, H, dk, dv]` or None (zeros).
      scale: python float multiplying q.
      chunk_size: tokens between stored states (rounded up to a multiple of 16).
      interpret: interpret mode; None means "on CPU".
      block_v: value-dim tile per program (GPU default 64 when it divides dv).
      num_warps: Triton warps per program (GPU only); None: 4, or with `chunk_parallel` each
        kernel's own (`gla_chunk.WARPS`).
      split_intra: compute the state-free parts (`P V` forward; `P^T dO` and the intra-block
        parts of dq, dk backward) in sub-block-parallel kernels (grid (B, H, T / 16)) so that
        the sequential kernels only do the state matmuls. Same results; on an H100, GLA bf16
        fwd+bwd at (8, 2048, 16, 128) took 11.6 ms instead of 33.0 ms (benchmarks/RESULTS.md).
        None (default): on for 16-bit inputs, off for float32 (not compiled on a GPU in f32
        yet).
      chunk_parallel: use `pallas_kernels.gla_chunk`: sequential kernels that only carry the
        state from chunk to chunk (one `[dk, C] x [C, BV]` product per chunk) and
        chunk-parallel kernels for the intra-chunk scores, outputs and gradients (fla's
        chunk_gla organisation). Same results. None (default): on for 16-bit inputs on a GPU
        (bf16 fwd+bwd at (8, 2048, 16, 128): 3.15 ms on an H100, fla 3.74 ms; on an H200
        5.0 ms before the diagonal blocks became products, 10.3 ms for `split_intra`;
        benchmarks/RESULTS.md), off elsewhere. `split_intra` does not apply.
      block_v_chunk: with `chunk_parallel`, the value tile of the output kernel (default: the
        whole dv up to 128).
      _layout: with `chunk_parallel`, forces the sequence layout ("bthd" `[B, T, H, d]`, the
        GPU default, or "bhtd"); for tests.

    Returns:
      o: `[B, T, H, dv]` in q's dtype; final_state: `[B, H, dk, dv]` f32.
    """
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must be [B, T, H, dk]; got q {q.shape}, k {k.shape}")
    B, T, H, dk = q.shape
    if v.ndim != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, dv] = [{B}, {T}, {H}, dv]; got {v.shape}")
    dv = v.shape[-1]
    if gate.shape not in ((B, T, H), (B, T, H, dk)):
        raise ValueError(f"gate must be [B, T, H] = {(B, T, H)} or [B, T, H, dk] = "
                         f"{(B, T, H, dk)}; got {gate.shape}")
    if initial_state is not None and initial_state.shape != (B, H, dk, dv):
        raise ValueError(f"initial_state must be [B, H, dk, dv] = {(B, H, dk, dv)}; "
                         f"got {initial_state.shape}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size}")
    C = cm.round_up(int(chunk_size), SUB)  # a tuning knob: rounded up to whole sub-blocks
    interpret = cm.resolve_interpret(interpret)
    platform = cm.target_platform(interpret, _target)
    bv = block_v if block_v is not None else cm.value_tile(dv, platform)
    if dv % bv:
        raise ValueError(f"block_v={bv} must divide dv={dv}")
    dtype = jnp.promote_types(q.dtype, k.dtype)
    if split_intra is None:
        split_intra = dtype != F32
    if chunk_parallel is None:
        chunk_parallel = platform == "gpu" and dtype != F32
    # chunk_parallel on GPU: the kernels read and write [B, L, H, d] (no transposes);
    # elsewhere [B, H, L, d] (TPU block rules). `_layout` forces one (tests).
    layout = (_layout or ("bthd" if platform == "gpu" else "bhtd")) if chunk_parallel else "bhtd"
    Lp = cm.round_up(max(T, 1), C)
    if layout == "bthd":
        to_seq = lambda x, value=0.0: cm.pad_axis(x, 1, Lp, value)
    else:
        to_seq = lambda x, value=0.0: cm.pad_axis(jnp.transpose(x, (0, 2, 1, 3)), 2, Lp, value)
    g = gate.astype(F32)
    if g.ndim == 3:
        g = jnp.broadcast_to(g[..., None], (B, T, H, dk))
    h0 = jnp.zeros((B, H, dk, dv), F32) if initial_state is None else initial_state.astype(F32)
    qkv = (to_seq(q.astype(dtype)), to_seq(k.astype(dtype)), to_seq(v.astype(dtype)))
    if chunk_parallel:
        from pallas_kernels import gla_chunk

        bvc = block_v_chunk if block_v_chunk is not None else (dv if dv <= 128 else bv)
        if dv % bvc:
            raise ValueError(f"block_v_chunk={bvc} must divide dv={dv}")
        nw = None if num_warps is None else int(num_warps)
        cfg = (C, float(scale), interpret, platform, int(bv), nw, layout, int(bvc))
        o, ht = gla_chunk.core(*qkv, to_seq(g, 1.0), h0, cfg)
    else:
        la = to_seq(jnp.log(jnp.maximum(jnp.abs(g), cm.GATE_FLOOR)))
        sa = to_seq(jnp.where(g < 0, -1.0, 1.0), 1.0)
        args = (*qkv, la, sa, h0)
        cfg = (C, float(scale), interpret, platform, int(bv), int(num_warps or 4),
               bool(split_intra))
        o, ht = _core(*args, cfg)
    if layout == "bthd":
        return o[:, :T], ht
    return jnp.transpose(o[:, :, :T], (0, 2, 1, 3)), ht
