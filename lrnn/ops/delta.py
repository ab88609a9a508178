"""DeltaProduct and DeltaNet: products of generalised Householder steps on a matrix state.

Per token (``S [dk, dv]``): ``S <- gate * S``, then for j = 1..n_h
``S <- (I - beta_j k_j k_j^T) S + beta_j k_j v_j^T``; read-out ``o_t = S_t^T (scale q_t)``
after the last step. ``delta_rule`` is n_h = 1.

Chunkwise form (``implementation="chunked"``): the n_h sub-steps of each token are
interleaved into one sequence of ``L = C n_h`` gated delta steps
``S_j = a_j (I - beta_j k_j k_j^T) S_{j-1} + beta_j k_j v_j^T`` per chunk of C tokens
(``a_j`` = the token's gate on its first sub-step, 1 on the others). With
``gamma_t = prod_{r<=t} a_r`` from the chunk start, ``D_s = prod_{s<r<L} a_r`` and the
causal decay ``G[t, s] = prod_{s<r<=t} a_r`` (all log space, sign apart), the UT transform

    T = (I + tril(diag(beta) (K K^T * G), -1))^{-1} diag(beta)
    W = T diag(gamma) K,   U = T V

gives the pseudo-values ``Delta = U - W S_in`` and

    chunk transition  A_c = gamma_{L-1} I - K^T diag(D) W     (DENSE element)
    chunk input       b_c = K^T diag(D) U
    read-out (rows r = last sub-step of each token)
        o = (gamma_r q_r - Attn W) S_in + Attn U,   Attn = (q_r K^T) * G[r, :].

Ungated, these are the familiar ``I - K^T W`` and ``K^T U``. Across chunks the "loop"
combine applies ``A_c`` in this factored form (``4 L dk dv`` flops per chunk); the "scan"
combine and the shard summary form the dense ``dk x dk`` element. The unit lower-triangular
inverse is formed by substitution on 8 x 8 diagonal blocks merged by block recursion
(:func:`lrnn.ops._common.unit_lower_inverse`): batched matmuls, which XLA runs far faster than
a batched triangular solve on CPU. The chunk-local
work runs under ``jax.checkpoint`` (the backward pass recomputes it instead of storing
``[L, L]`` tensors).

Non-finite inputs stay causal, as in the token loop: the chunk arithmetic runs on their
finite part and NaN is put where the loop is non-finite (:func:`_sanitise`): a bad
``v[t, j, c]`` poisons value column c from sub-step (t, j) on, a bad k, beta or gate every
column, a bad q only token t's read-out; the chunk summaries carry the NaN columns on. So
are "sequential", "scan" and the token-by-token kernel; the Pallas chunk kernels
(``implementation="pallas"`` on a TPU, on CPU, and on a GPU in bfloat16 or for long
sequences) are not yet (``pallas_kernels/delta_product.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lrnn.monoid import DENSE, Affine
from lrnn.monoid import scan as monoid_scan
from lrnn.ops import _common as c

__all__ = [
    "delta_product",
    "delta_rule",
    "delta_product_step",
    "delta_rule_step",
    "delta_summary",
]

_OP = "delta_product"


def _validate(q, k, v, beta, gate, initial_state, op=_OP, need_q=True):
    k = c.as_float(k, "k", op)
    c.check_shape(k, (None,) * 5, "k", op, "[B, T, H, n_h, dk]")
    B, T, H, n_h, dk = k.shape
    if need_q:
        q = c.as_float(q, "q", op)
        if q.ndim == 4 and q.shape[:3] == (B, T, H) and q.shape[3] != dk:
            raise ValueError(f"{op}: q and k must share the key size dk: q {q.shape} has "
                             f"dk = {q.shape[3]}, k has dk = {dk}")
        c.check_shape(q, (B, T, H, dk), "q", op, "[B, T, H, dk]")
    v = c.as_float(v, "v", op)
    c.check_shape(v, (B, T, H, n_h, None), "v", op, "[B, T, H, n_h, dv]")
    beta = c.as_float(beta, "beta", op)
    c.check_shape(beta, (B, T, H, n_h), "beta", op, "[B, T, H, n_h]")
    if gate is not None:
        gate = c.as_float(gate, "gate", op)
        c.check_shape(gate, (B, T, H), "gate", op, "[B, T, H] (per head) or None")
    if initial_state is not None:
        initial_state = c.as_float(initial_state, "initial_state", op)
        c.check_shape(initial_state, (B, H, dk, v.shape[-1]), "initial_state", op,
                      "[B, H, dk, dv]")
    return q, k, v, beta, gate, initial_state


# ------------------------------------------------------------------------------------------
# sequential / step
# ------------------------------------------------------------------------------------------
def _token(S, q, k, v, beta, g):
    """One token. S [B,H,dk,dv]; q [B,H,dk]; k [B,H,n_h,dk]; v [B,H,n_h,dv]; beta [B,H,n_h];
    g [B,H] or None."""
    if g is not None:
        S = g[..., None, None] * S
    for j in range(k.shape[-2]):
        kj, vj, bj = k[..., j, :], v[..., j, :], beta[..., j]
        kS = c.einsum("bhk,bhkv->bhv", kj, S)
        S = S + (bj[..., None, None] * kj[..., :, None]) * (vj - kS)[..., None, :]
    return S, c.einsum("bhk,bhkv->bhv", q, S)


def _sequential(q, k, v, beta, gate, S0):
    def step(S, x):
        return _token(S, *x)

    xs = tuple(None if x is None else jnp.moveaxis(x, 1, 0) for x in (q, k, v, beta, gate))
    S, o = lax.scan(step, S0, xs)
    return jnp.moveaxis(o, 0, 1), S


def token_elements(k, v, beta, gate=None) -> Affine:
    """Per-token DENSE elements ``A_t = H_{n_h} ... H_1 gate_t``, with their inputs.

    Args:
      k: ``[..., n_h, dk]``; v: ``[..., n_h, dv]``; beta: ``[..., n_h]``; gate: ``[...]``.

    Returns:
      ``Affine(A [..., dk, dk], b [..., dk, dv])``.
    """
    dk = k.shape[-1]
    dt = k.dtype
    eye = jnp.eye(dk, dtype=dt)
    A = jnp.broadcast_to(eye, k.shape[:-2] + (dk, dk))
    if gate is not None:
        A = gate[..., None, None] * A
    b = jnp.zeros(k.shape[:-2] + (dk, v.shape[-1]), dt)
    for j in range(k.shape[-2]):
        kj, vj, bj = k[..., j, :], v[..., j, :], beta[..., j, None, None]
        A = A - bj * kj[..., :, None] * c.einsum("...k,...kj->...j", kj, A)[..., None, :]
        b = b + bj * kj[..., :, None] * (vj - c.einsum("...k,...kv->...v", kj, b))[..., None, :]
    return Affine(A, b)


def _scan(q, k, v, beta, gate, S0):
    elems = token_elements(k, v, beta, gate)  # [B, T, H, dk, dk], [B, T, H, dk, dv]
    S = monoid_scan(DENSE, elems, S0, axis=1)
    return c.einsum("bthk,bthkv->bthv", q, S), S[:, -1]


# ------------------------------------------------------------------------------------------
# chunked
# ------------------------------------------------------------------------------------------
def _chunk_layout(x, C, value=0.0):
    """``[B, T, H, ...] -> [B, H, N, C, ...]``."""
    return jnp.moveaxis(c.to_chunks(x, C, value), 3, 1)


def _substeps(k, v, beta, gate, C):
    """The interleaved sub-step sequence per chunk.

    Returns K ``[B,H,N,L,dk]``, V ``[B,H,N,L,dv]``, beta ``[B,H,N,L]``, log|a| and
    [a < 0] ``[B,H,N,L]`` (both None without a gate) with ``L = C n_h``.
    """
    B, T, H, n_h, dk = k.shape
    kc = _chunk_layout(k, C)  # [B, H, N, C, n_h, dk]
    N = kc.shape[2]
    L = C * n_h
    K = kc.reshape(B, H, N, L, dk)
    V = _chunk_layout(v, C).reshape(B, H, N, L, v.shape[-1])
    bt = _chunk_layout(beta, C).reshape(B, H, N, L)
    if gate is None:
        f = neg = None
    else:
        f_tok, n_tok = c.log_sign(_chunk_layout(gate, C, 1.0))  # [B, H, N, C]
        first = (jnp.arange(n_h) == 0)  # the gate acts on the first sub-step
        f = jnp.where(first, f_tok[..., None], 0.0).reshape(B, H, N, L)
        neg = jnp.where(first, n_tok[..., None], 0).reshape(B, H, N, L)
    return K, V, bt, f, neg


def _wy(K, V, bt, f, neg):
    """UT transform per chunk: ``(G, gamma, U, W)``."""
    if f is None:  # ungated: no decays
        L = K.shape[-2]
        G = jnp.tril(jnp.ones((L, L), K.dtype))
        gam = jnp.ones(K.shape[:-1], K.dtype)
    else:
        G = c.segment_decay(f, neg)  # [..., L, L]
        gam = c.prefix_decay(f, neg)  # [..., L]
    KK = c.einsum("...tk,...sk->...ts", K, K)
    M = jnp.tril(bt[..., :, None] * KK * G, -1)
    Tinv = c.unit_lower_inverse(M)  # (I + M)^{-1}; a triangular solve is slow on CPU
    U = c.einsum("...ts,...sv->...tv", Tinv, bt[..., None] * V)
    W = c.einsum("...ts,...sk->...tk", Tinv, (bt * gam)[..., None] * K)
    return G, gam, U, W


def _lowrank(K, f, neg, gam, U, W):
    """Chunk summary in factored form: ``A_c = gamma_last I - KD^T W``, ``b_c = KD^T U``.

    Returns ``(gamma_last [...], KD [..., L, dk], W [..., L, dk], b_c [..., dk, dv])``.
    """
    KD = K if f is None else K * c.suffix_decay(f, neg)[..., None]  # D_s k_s
    return gam[..., -1], KD, W, c.einsum("...sk,...sv->...kv", KD, U)


def _dense(gam_last, KD, W, b_c) -> Affine:
    """The factored summary as a DENSE element (``dk x dk`` transition)."""
    dk = KD.shape[-1]
    A = gam_last[..., None, None] * jnp.eye(dk, dtype=KD.dtype) - c.einsum(
        "...sk,...sj->...kj", KD, W)
    return Affine(A, b_c)


def _chunk_phase(q, k, v, beta, gate, C):
    n_h = k.shape[3]
    K, V, bt, f, neg = _substeps(k, v, beta, gate, C)
    G, gam, U, W = _wy(K, V, bt, f, neg)
    rows = jnp.arange(C) * n_h + (n_h - 1)  # read-out sub-steps
    Qr = _chunk_layout(q, C)  # [B, H, N, C, dk]
    attn = c.einsum("...tk,...sk->...ts", Qr, K) * G[..., rows, :]
    qeff = gam[..., rows, None] * Qr - c.einsum("...ts,...sk->...tk", attn, W)
    oin = c.einsum("...ts,...sv->...tv", attn, U)
    return _lowrank(K, f, neg, gam, U, W), (qeff, oin)


def _loop_lowrank(lowrank, S0):
    """``S <- gamma_last S - KD^T (W S) + b_c`` chunk by chunk (``lax.scan``).

    Applying the chunk transition in factored form costs ``4 L dk dv`` per chunk instead of
    ``2 dk^2 dv`` for a dense ``A_c`` (and never forms it).
    """

    def step(S, x):
        g, KD, W, b = x
        WS = c.einsum("bhsk,bhkv->bhsv", W, S)
        S_new = g[..., None, None] * S - c.einsum("bhsk,bhsv->bhkv", KD, WS) + b
        return S_new, S

    S_final, S_in = lax.scan(step, S0, tuple(jnp.moveaxis(x, 2, 0) for x in lowrank))
    return jnp.moveaxis(S_in, 0, 2), S_final


def _sanitise(q, k, v, beta, gate):
    """Non-finite inputs replaced by neutral values, and what they poison in the token loop.

    Inside a chunk a bad value would reach earlier rows through the triangular products
    (``0 * NaN = NaN``), so the chunk arithmetic runs on finite values (0; gates 1) and the
    outputs and states the token loop makes non-finite are set to NaN afterwards.

    Returns:
      ``((q, k, v, beta, gate) sanitised, bad_q [B, T, H], bad_col [B, T, H, n_h, dv])``:
      ``bad_q``: token t's read-out only; ``bad_col``: value column c from sub-step (t, j)
      on (the state's columns evolve independently, so a bad ``v[t, j, c]`` poisons that
      column alone; a bad k, beta or gate every column).
    """
    ok = jnp.isfinite
    bad_q = ~jnp.all(ok(q), axis=-1)
    bad_row = ~jnp.all(ok(k), axis=-1) | ~ok(beta)  # [B, T, H, n_h]
    if gate is not None:  # the gate acts before the first sub-step
        bad_row = bad_row | (~ok(gate)[..., None] & (jnp.arange(k.shape[3]) == 0))
    bad_col = ~ok(v) | bad_row[..., None]
    clean = lambda x, fill=0.0: jnp.where(ok(x), x, fill)
    gate = None if gate is None else clean(gate, 1.0)
    return (clean(q), clean(k), clean(v), clean(beta), gate), bad_q, bad_col


def _finite_chunk_phase(q, k, v, beta, gate, C):
    """`_chunk_phase` on the finite part of the inputs (`_sanitise`), with the chunk's state
    contribution NaN in the value columns a non-finite input poisons; also returns, per chunk
    and value column, the first poisoned sub-step (`C n_h`: none) and the bad read-outs.
    Run under `jax.checkpoint`, so its masks are recomputed, not stored, for the backward."""
    n_h = k.shape[3]
    (q, k, v, beta, gate), bad_q, bad_col = _sanitise(q, k, v, beta, gate)
    (g, KD, W, b), (qeff, oin) = _chunk_phase(q, k, v, beta, gate, C)
    L = C * n_h
    bad = _chunk_layout(bad_col, C, False).reshape(b.shape[:3] + (L, v.shape[-1]))
    first = jnp.min(jnp.where(bad, jnp.arange(L)[:, None], L), axis=-2)  # [B, H, N, dv]
    b = jnp.where((first < L)[..., None, :], jnp.nan, b)  # the state after the chunk
    return (g, KD, W, b), (qeff, oin), first, _chunk_layout(bad_q, C, False)


def _chunked(q, k, v, beta, gate, S0, C, chunk_combine):
    B, T, H, n_h, _ = k.shape
    lowrank, (qeff, oin), first, bad_q = jax.checkpoint(
        functools.partial(_finite_chunk_phase, C=C))(q, k, v, beta, gate)
    if chunk_combine == "loop":
        S_in, S_final = _loop_lowrank(lowrank, S0)
    else:
        S_in, S_final = c.combine_chunks(DENSE, _dense(*lowrank), S0, axis=2,
                                         chunk_combine=chunk_combine)
    o = c.einsum("bhntk,bhnkv->bhntv", qeff, S_in) + oin
    rows = jnp.arange(C) * n_h + (n_h - 1)  # read-out sub-steps
    poison = (rows[:, None] >= first[..., None, :]) | bad_q[..., None]
    o = jnp.where(poison, jnp.nan, o)
    N = o.shape[2]
    o = jnp.moveaxis(o, 1, 3).reshape(B, N * C, H, -1)[:, :T]
    return o, S_final


def delta_summary(k, v, beta, *, gate=None, chunk_size: int = 64) -> Affine:
    """The whole DeltaProduct sequence as one DENSE element.

    Args:
      k: ``[B, T, H, n_h, dk]``.
      v: ``[B, T, H, n_h, dv]``.
      beta: ``[B, T, H, n_h]``.
      gate: ``[B, T, H]`` or None.
      chunk_size: chunk length of the pass that computes it.

    Returns:
      ``Affine(A [B, H, dk, dk], b [B, H, dk, dv])``: the product of all token transitions
      and the final state from a zero initial state; at least float32.
    """
    op = "delta_summary"
    _, k, v, beta, gate, _ = _validate(None, k, v, beta, gate, None, op, need_q=False)
    C = min(c.check_positive_int(chunk_size, "chunk_size", op), k.shape[1])
    dt = c.calc_dtype(k, v, beta, gate)
    k, v, beta = k.astype(dt), v.astype(dt), beta.astype(dt)
    gate = None if gate is None else gate.astype(dt)
    K, V, bt, f, neg = _substeps(k, v, beta, gate, C)
    _, gam, U, W = _wy(K, V, bt, f, neg)
    return c.fold_chunks(DENSE, _dense(*_lowrank(K, f, neg, gam, U, W)), axis=2)


# ------------------------------------------------------------------------------------------
# public
# ------------------------------------------------------------------------------------------
def delta_product(
    q,
    k,
    v,
    beta,
    *,
    gate=None,
    initial_state=None,
    scale: float = 1.0,
    chunk_size: int = 64,
    implementation: str = "auto",
    chunk_combine: str = "loop",
    axis_name=None,
    exchange: str = "all_gather",
):
    """DeltaProduct: n_h generalised Householder steps per token on a matrix state.

    Args:
      q: ``[B, T, H, dk]`` queries (not scaled implicitly).
      k: ``[B, T, H, n_h, dk]`` keys (unit norm by convention; not normalised here).
      v: ``[B, T, H, n_h, dv]`` values.
      beta: ``[B, T, H, n_h]`` step sizes in [0, 2] ([1, 2] gives negative eigenvalues).
      gate: ``[B, T, H]`` per-head decay applied before the steps (any sign), or None.
      initial_state: ``[B, H, dk, dv]``; zeros if None.
      scale: multiplies q.
      chunk_size: tokens per chunk of the chunked form (positive int).
      implementation: "sequential" | "scan" | "chunked" | "pallas" | "auto".
      chunk_combine: chunked form across chunks: "loop" (``lax.scan``) or "scan"
        (``lrnn.scan``).
      axis_name: set inside ``jax.shard_map`` with the time axis sharded over this mesh axis.
      exchange: how shard summaries are exchanged (see ``lrnn.parallel``).

    Returns:
      ``(o [B, T, H, dv], final_state [B, H, dk, dv])``: o in the inputs' dtype, the final
      state in at least float32.
    """
    q, k, v, beta, gate, S0 = _validate(q, k, v, beta, gate, initial_state)
    return _delta(q, k, v, beta, gate, S0, scale, chunk_size, implementation, chunk_combine,
                  axis_name, exchange, _OP)


def _delta(q, k, v, beta, gate, S0, scale, chunk_size, implementation, chunk_combine,
           axis_name, exchange, op):
    B, T, H, n_h, dk = k.shape
    impl = c.resolve_implementation(
        implementation, op, "delta_product", family="delta" if n_h == 1 else "delta_product",
        dims=dict(B=B, T=T, H=H, dk=dk, n_h=n_h), dtype=c.out_dtype(q, k, v))
    chunk_size = c.check_positive_int(chunk_size, "chunk_size", op)
    c.check_choice(chunk_combine, c.CHUNK_COMBINES, "chunk_combine", op)
    c.check_scale(scale, op)
    c.check_sequence_axis(axis_name, exchange, op)
    if c.empty(q, k, v, beta) and axis_name is None:
        impl = "sequential"
    out_dt = c.out_dtype(q, k, v)
    dt = c.calc_dtype(q, k, v, beta, gate, S0)
    if axis_name is None:
        return _local(q, k, v, beta, gate, S0, scale, chunk_size, impl, chunk_combine, op,
                      out_dt, dt)
    # Sequence-parallel: ONE local pass gives both this shard's summary and its outputs. The
    # recurrence acts on the state's columns independently, so with values [v | 0] and the
    # initial state [0 | I] the pass carries [b_t | A_1..t] (b_t: the state from zero, A_1..t:
    # the product of the transitions so far): its final state is the summary (A, b), its
    # outputs are [o_t from zero | scale q_t^T A_1..t]. After the exchange the true output is
    # o_t + scale q_t^T A_1..t S_in, an XLA matmul. Costs one pass at width dv + dk instead
    # of a summary pass plus a pass from S_in.
    B, T, H, n_h, dk = k.shape
    dv = v.shape[-1]
    v2 = jnp.concatenate([v, jnp.zeros((B, T, H, n_h, dk), v.dtype)], axis=-1)
    eye = jnp.broadcast_to(jnp.eye(dk, dtype=dt), (B, H, dk, dk))
    S02 = c.varying_zeros((B, H, dk, dv + dk), dt, axis_name).at[..., dv:].add(eye)
    o2, S2 = _local(q, k, v2, beta, gate, S02, scale, chunk_size, impl, chunk_combine, op,
                    out_dt, dt)
    S2 = S2.astype(dt)
    z = jnp.zeros((B, H, dk, dv), dt) if S0 is None else S0.astype(dt)
    S_in, h_final = c.shard_prefix(DENSE, Affine(S2[..., dv:], S2[..., :dv]), z,
                                   axis_name=axis_name, exchange=exchange)
    o = o2[..., :dv].astype(dt) + c.einsum("bthk,bhkv->bthv", o2[..., dv:].astype(dt), S_in)
    return o.astype(out_dt), h_final


def _local(q, k, v, beta, gate, S0, scale, chunk_size, impl, chunk_combine, op, out_dt, dt):
    """One device's pass (no sequence axis): ``(o in out_dt, final state)``."""
    if impl == "pallas":
        fn = c.pallas_fn("delta_product", op)
        return fn(q, k, v, beta, gate=gate, initial_state=S0, scale=scale,
                  chunk_size=chunk_size, interpret=None)
    B, T, H, _, dk = k.shape
    S0 = jnp.zeros((B, H, dk, v.shape[-1]), dt) if S0 is None else S0.astype(dt)
    qs = q.astype(dt) * scale
    k, v, beta = k.astype(dt), v.astype(dt), beta.astype(dt)
    gate = None if gate is None else gate.astype(dt)
    if impl == "sequential":
        o, S = _sequential(qs, k, v, beta, gate, S0)
    elif impl == "scan":
        o, S = _scan(qs, k, v, beta, gate, S0)
    else:
        o, S = _chunked(qs, k, v, beta, gate, S0, min(chunk_size, T), chunk_combine)
    return o.astype(out_dt), S


def delta_rule(
    q,
    k,
    v,
    beta,
    *,
    gate=None,
    initial_state=None,
    scale: float = 1.0,
    chunk_size: int = 64,
    implementation: str = "auto",
    chunk_combine: str = "loop",
    axis_name=None,
    exchange: str = "all_gather",
):
    """DeltaNet (optionally gated): :func:`delta_product` with n_h = 1.

    Args:
      q: ``[B, T, H, dk]``.
      k: ``[B, T, H, dk]`` (unit norm by convention).
      v: ``[B, T, H, dv]``.
      beta: ``[B, T, H]`` in [0, 2].
      gate: ``[B, T, H]`` or None.
      initial_state, scale, chunk_size, implementation, chunk_combine, axis_name, exchange:
        as in :func:`delta_product`.

    Returns:
      ``(o [B, T, H, dv], final_state [B, H, dk, dv])``.
    """
    op = "delta_rule"
    k = c.as_float(k, "k", op)
    c.check_shape(k, (None,) * 4, "k", op, "[B, T, H, dk]")
    B, T, H, dk = k.shape
    v = c.as_float(v, "v", op)
    c.check_shape(v, (B, T, H, None), "v", op, "[B, T, H, dv]")
    beta = c.as_float(beta, "beta", op)
    c.check_shape(beta, (B, T, H), "beta", op, "[B, T, H]")
    q, k, v, beta, gate, S0 = _validate(q, k[:, :, :, None], v[:, :, :, None],
                                        beta[..., None], gate, initial_state, op)
    return _delta(q, k, v, beta, gate, S0, scale, chunk_size, implementation, chunk_combine,
                  axis_name, exchange, op)


def delta_product_step(q, k, v, beta, *, gate=None, state=None, scale: float = 1.0):
    """One DeltaProduct token (decoding); repeated use equals the whole sequence.

    Args:
      q: ``[B, H, dk]``.
      k: ``[B, H, n_h, dk]``.
      v: ``[B, H, n_h, dv]``.
      beta: ``[B, H, n_h]``.
      gate: ``[B, H]`` or None.
      state: ``[B, H, dk, dv]``; zeros if None.
      scale: multiplies q.

    Returns:
      ``(o [B, H, dv] in the inputs' dtype, new state [B, H, dk, dv] in at least float32)``.
    """
    return _step(q, k, v, beta, gate, state, scale, "delta_product_step", n_h_axis=True)


def delta_rule_step(q, k, v, beta, *, gate=None, state=None, scale: float = 1.0):
    """One DeltaNet token (decoding): q, k ``[B, H, dk]``, v ``[B, H, dv]``, beta ``[B, H]``,
    gate ``[B, H]`` or None, state ``[B, H, dk, dv]``. Returns ``(o, new state)``."""
    return _step(q, k, v, beta, gate, state, scale, "delta_rule_step", n_h_axis=False)


def _step(q, k, v, beta, gate, state, scale, op, n_h_axis):
    k = c.as_float(k, "k", op)
    q = c.as_float(q, "q", op)
    v = c.as_float(v, "v", op)
    beta = c.as_float(beta, "beta", op)
    if n_h_axis:
        c.check_shape(k, (None,) * 4, "k", op, "[B, H, n_h, dk]")
        B, H, n_h, dk = k.shape
        c.check_shape(v, (B, H, n_h, None), "v", op, "[B, H, n_h, dv]")
        c.check_shape(beta, (B, H, n_h), "beta", op, "[B, H, n_h]")
    else:
        c.check_shape(k, (None,) * 3, "k", op, "[B, H, dk]")
        B, H, dk = k.shape
        c.check_shape(v, (B, H, None), "v", op, "[B, H, dv]")
        c.check_shape(beta, (B, H), "beta", op, "[B, H]")
        k, v, beta = k[:, :, None], v[:, :, None], beta[..., None]
    c.check_shape(q, (B, H, dk), "q", op, "[B, H, dk]")
    if gate is not None:
        gate = c.as_float(gate, "gate", op)
        c.check_shape(gate, (B, H), "gate", op, "[B, H] or None")
    c.check_scale(scale, op)
    dv = v.shape[-1]
    dt = c.calc_dtype(q, k, v, beta, gate, state)
    if state is None:
        state = jnp.zeros((B, H, dk, dv), dt)
    else:
        state = c.as_float(state, "state", op)
        c.check_shape(state, (B, H, dk, dv), "state", op, "[B, H, dk, dv]")
    S, o = _token(state.astype(dt), q.astype(dt) * scale, k.astype(dt), v.astype(dt),
                  beta.astype(dt), None if gate is None else gate.astype(dt))
    return o.astype(c.out_dtype(q, k, v)), S
