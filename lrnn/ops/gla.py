"""Gated linear attention: ``S_t = diag(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

Gates are per head (``[B, T, H]``) or per key (``[B, T, H, dk]``) with values in [-1, 1];
negative gates (negative eigenvalues) work in every implementation.

Chunkwise form (``implementation="chunked"``), per chunk of C tokens with entering state
``S_in``, ``P_t = prod_{r<=t} g_r`` (from the chunk start) and ``D_s = prod_{s<r<C} g_r``:

- summary (a DIAGONAL element): ``A_c = P_{C-1}``, ``b_c = sum_s (D_s * k_s) v_s^T``;
- read-out: ``o_t = (P_t * q_t)^T S_in + sum_{s<=t} (q_t . (prod_{s<r<=t} g_r) k_s) v_s``.

All gate products come from :mod:`lrnn.ops._common` (log space, sign apart, range sums by
masked cumulative sums). Per-key gates form the ``[C, C, dk]`` decay tensor per chunk; the
chunk-local work runs under ``jax.checkpoint`` so the backward pass recomputes it rather
than storing it.

A NaN or inf in the inputs reaches only later positions, as in the token loop, in every
implementation: the chunked form zeroes non-finite values before its masked products and sets
the entries the loop makes non-finite afterwards (``_finite_chunks``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lrnn.monoid import DIAGONAL, Affine
from lrnn.monoid import scan as monoid_scan
from lrnn.ops import _common as c

__all__ = ["gated_linear_attention", "gated_linear_attention_step", "gla_summary"]

_OP = "gated_linear_attention"


def _validate(q, k, v, gate, initial_state, op=_OP, need_q=True):
    k = c.as_float(k, "k", op)
    c.check_shape(k, (None, None, None, None), "k", op, "[B, T, H, dk]")
    B, T, H, dk = k.shape
    if need_q:
        q = c.as_float(q, "q", op)
        c.check_shape(q, k.shape, "q", op, "[B, T, H, dk] like k")
    v = c.as_float(v, "v", op)
    c.check_shape(v, (B, T, H, None), "v", op, "[B, T, H, dv]")
    gate = c.as_float(gate, "gate", op)
    if gate.ndim == 3:
        c.check_shape(gate, (B, T, H), "gate", op, "[B, T, H] (per head)")
    else:
        c.check_shape(gate, (B, T, H, dk), "gate", op, "[B, T, H] or [B, T, H, dk] (per key)")
    if initial_state is not None:
        initial_state = c.as_float(initial_state, "initial_state", op)
        c.check_shape(initial_state, (B, H, dk, v.shape[-1]), "initial_state", op,
                      "[B, H, dk, dv]")
    return q, k, v, gate, initial_state


# ------------------------------------------------------------------------------------------
# sequential / step
# ------------------------------------------------------------------------------------------
def _token(S, q, k, v, g):
    """One token. S [B, H, dk, dv]; q, k [B, H, dk]; v [B, H, dv]; g [B, H] or [B, H, dk]."""
    g = g[..., None] if g.ndim == k.ndim else g[..., None, None]
    S = g * S + k[..., :, None] * v[..., None, :]
    o = c.einsum("bhk,bhkv->bhv", q, S)
    return S, o


def _sequential(q, k, v, gate, S0):
    def step(S, x):
        return _token(S, *x)

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, gate))
    S, o = lax.scan(step, S0, xs)
    return jnp.moveaxis(o, 0, 1), S


def _scan(q, k, v, gate, S0):
    A = gate if gate.ndim == 4 else jnp.broadcast_to(gate[..., None], k.shape)
    b = k[..., :, None] * v[..., None, :]  # [B, T, H, dk, dv]
    S = monoid_scan(DIAGONAL, Affine(A, b), S0, axis=1)
    o = c.einsum("bthk,bthkv->bthv", q, S)
    return o, S[:, -1]


# ------------------------------------------------------------------------------------------
# chunked
# ------------------------------------------------------------------------------------------
def _chunk_layout(x, C, value=0.0):
    """``[B, T, H, ...] -> [B, H, N, C, ...]``."""
    x = c.to_chunks(x, C, value)  # [B, N, C, H, ...]
    return jnp.moveaxis(x, 3, 1)


def _log_gates(gate, C):
    """log|g| and [g < 0] in chunk layout: ``[B, H, N, C]`` or ``[B, H, N, dk, C]``."""
    g = _chunk_layout(gate, C, 1.0)
    if g.ndim == 5:  # per key: [B, H, N, C, dk] -> [B, H, N, dk, C]
        g = jnp.moveaxis(g, -1, -2)
    return c.log_sign(g)


def _summaries(k, v, f, neg):
    """Chunk summaries from chunk-layout k [B,H,N,C,dk], v [B,H,N,C,dv] and log gates."""
    P_last = c.prefix_decay(f, neg)[..., -1]  # [B,H,N] or [B,H,N,dk]
    D = c.suffix_decay(f, neg)  # [B,H,N,C] or [B,H,N,dk,C]
    if f.ndim == 4:
        A = jnp.broadcast_to(P_last[..., None], k.shape[:3] + k.shape[-1:])
        kd = k * D[..., None]
    else:
        A = P_last
        kd = k * jnp.swapaxes(D, -1, -2)
    return Affine(A, c.einsum("bhnsk,bhnsv->bhnkv", kd, v))


_SUB = (16, 8)  # per-key gates: sub-block sizes tried (the first dividing C wins)


def _readout(q, k, v, f, neg):
    """Per chunk: ``(Qeff [B,H,N,C,dk], Oin [B,H,N,C,dv])``, o = Qeff S_in + Oin."""
    P = c.prefix_decay(f, neg)
    if f.ndim == 4:
        attn = c.einsum("bhntk,bhnsk->bhnts", q, k) * c.segment_decay(f, neg)
        return q * P[..., None], c.einsum("bhnts,bhnsv->bhntv", attn, v)
    qeff = q * jnp.swapaxes(P, -1, -2)
    C = f.shape[-1]
    sub = next((b for b in _SUB if C % b == 0 and C > b), None)
    if sub is None:  # short or odd chunks: the [C, C, dk] decay tensor
        attn = _decayed_scores(q, k, c.segment_decay(f, neg))
        return qeff, c.einsum("bhnts,bhnsv->bhntv", attn, v)
    return qeff, _intra_per_key(q, k, v, f, neg, sub)


def _decayed_scores(q, k, D):
    """``[..., t, s] = sum_k q[..., t, k] D[k, ..., t, s] k[..., s, k]`` for q, k ``[..., L, dk]``
    and D ``[B, H, N, dk, ..., L, L]`` (the key axis right after the chunk axis).

    Scaled queries first, then one batched matmul: XLA runs this several times faster on
    CPU than the three-operand einsum it would otherwise plan (a ``[t, s, k]`` broadcast)."""
    qd = jnp.moveaxis(q, -1, 3)[..., None] * D  # [B, H, N, dk, ..., t, s]
    return c.einsum("bhnk...ts,bhn...sk->bhn...ts", qd, k)


def _intra_per_key(q, k, v, f, neg, sub):
    """``sum_{s<=t} (q_t . (prod_{s<r<=t} g_r) k_s) v_s`` per chunk, per-key gates, in
    sub-blocks of ``sub`` tokens: ``[B,H,N,C,dv]``.

    Within a sub-block the exact ``[sub, sub, dk]`` decays (``segment_decay``). Across
    sub-blocks ``i > j`` the decay factors through the sub-block ends,
    ``prod_{s<r<=t} g_r = P_i(t) * X_ij * S_j(s)``: ``P_i(t)`` the product from the start of
    block i to t, ``S_j(s)`` from after s to the end of block j, ``X_ij`` the whole blocks
    strictly between (``segment_decay`` over block totals, shifted). Every factor is a
    product of gates in [-1, 1] (no division, no ``exp`` of a positive number), each is a
    sum of logs over exactly its own span (gradients stay exact for tiny gates, as in
    ``segment_decay``), and the cross-block part is a batched matmul. Exponentials:
    ``C (sub + 2) dk + nb^2 dk`` per chunk instead of ``C^2 dk`` (``nb = C / sub``).
    """
    C = q.shape[-2]
    nb = C // sub
    blk = lambda x: x.reshape(x.shape[:-2] + (nb, sub, x.shape[-1]))  # [.., C, d] -> blocks
    fb = f.reshape(f.shape[:-1] + (nb, sub))  # [B,H,N,dk,nb,sub]
    nbk = neg.reshape(fb.shape)
    qb, kb, vb = blk(q), blk(k), blk(v)  # [B,H,N,nb,sub,d]
    # i == j: exact decays inside each sub-block
    Dloc = c.segment_decay(fb, nbk)  # [B,H,N,dk,nb,sub,sub]
    att = _decayed_scores(qb, kb, Dloc)
    o = c.einsum("bhnits,bhnisv->bhnitv", att, vb)
    # i > j: P_i(t) X_ij S_j(s)
    Pin = jnp.moveaxis(c.prefix_decay(fb, nbk), 3, -1)  # [B,H,N,nb,sub,dk]
    Sx = jnp.moveaxis(c.suffix_decay(fb, nbk), 3, -1)
    tot_f, tot_n = jnp.sum(fb, -1), jnp.sum(nbk, -1)  # [B,H,N,dk,nb]
    X = c.segment_decay(tot_f, tot_n)  # [.., dk, i', j] = prod_{j < m <= i'}
    # X_ij = prod_{j < m < i} = X[i - 1, j] for j < i; zero on and above the diagonal
    X = jnp.pad(X[..., :-1, :], [(0, 0)] * (X.ndim - 2) + [(1, 0), (0, 0)])
    X = jnp.where(jnp.tril(jnp.ones((nb, nb), bool), -1), X, 0.0)
    qx = c.einsum("bhnitk,bhnkij->bhnijtk", qb * Pin, X)
    cross = c.einsum("bhnijtk,bhnjsk->bhnijts", qx, kb * Sx)
    o = o + c.einsum("bhnijts,bhnjsv->bhnitv", cross, vb)
    return o.reshape(o.shape[:3] + (C, o.shape[-1]))


def _first_bad(x, C, neutral=0.0):
    """Per chunk, the position of the first non-finite value along time (C if none), and x
    with its non-finite values replaced by ``neutral``: ``([B, H, N, ...], x)`` for x
    ``[B, T, H, ...]``."""
    ok = jnp.isfinite(x)
    t = lax.broadcasted_iota(jnp.int32, (C,) + (1,) * (x.ndim - 3), 0)
    first = jnp.min(jnp.where(_chunk_layout(ok, C, True), C, t), axis=3)
    return first, jnp.where(ok, x, neutral)


def _finite_chunks(k, v, gate, C):
    """Causality of non-finite values (NaN, inf) in the chunked form.

    A masked product (``0 * x`` of a causal mask, a triangular cumulative sum) turns a NaN or
    inf at position s into NaNs at positions before s in its chunk. So each is zeroed first
    (a gate set to 1) and the chunk's affected entries are set to NaN afterwards (``poison``),
    where the token loop makes them non-finite: value column c from the first bad ``v[., c]``
    on; every column from the first bad ``k[., i]`` or gate ``g[., i]`` on (the state's key
    row i is non-finite from there, and every output reads every row); in the chunk summary
    key row i (b, and A for a gate), value column c. A non-finite q only reaches its own
    output row in every product, so it is left as it is.

    Returns:
      ``(k, v, gate, poison)``: the zeroed inputs and ``poison(summary, oin)``.
    """
    fk, k = _first_bad(k, C)  # [B, H, N, dk]
    fv, v = _first_bad(v, C)  # [B, H, N, dv]
    fg, gate = _first_bad(gate, C, 1.0)  # [B, H, N] or [B, H, N, dk]
    fg = fg[..., None] if fg.ndim == 3 else fg
    row = jnp.minimum(fk, fg)  # key row i of the state is non-finite from row[i] on

    def poison(summary, oin):
        A, b = summary
        A = jnp.where(fg < C, jnp.nan, A)
        b = jnp.where((row[..., :, None] < C) | (fv[..., None, :] < C), jnp.nan, b)
        t = lax.broadcasted_iota(jnp.int32, (C, 1), 0)
        first = jnp.minimum(jnp.min(row, axis=-1)[..., None], fv)  # [B, H, N, dv]
        oin = jnp.where(t >= first[..., None, :], jnp.nan, oin)
        return Affine(A, b), oin

    return k, v, gate, poison


def _chunk_phase(q, k, v, gate, C):
    k, v, gate, poison = _finite_chunks(k, v, gate, C)
    f, neg = _log_gates(gate, C)
    qc, kc, vc = (_chunk_layout(x, C) for x in (q, k, v))
    qeff, oin = _readout(qc, kc, vc, f, neg)
    summary, oin = poison(_summaries(kc, vc, f, neg), oin)
    return summary, (qeff, oin)


def _chunked(q, k, v, gate, S0, C, chunk_combine):
    B, T, H, _ = q.shape
    summaries, (qeff, oin) = jax.checkpoint(functools.partial(_chunk_phase, C=C))(
        q, k, v, gate
    )
    S_in, S_final = c.combine_chunks(DIAGONAL, summaries, S0, axis=2,
                                     chunk_combine=chunk_combine)
    o = c.einsum("bhntk,bhnkv->bhntv", qeff, S_in) + oin  # [B, H, N, C, dv]
    N = o.shape[2]
    o = jnp.moveaxis(o, 1, 3).reshape(B, N * C, H, -1)[:, :T]
    return o, S_final


def gla_summary(k, v, gate, *, chunk_size: int = 64) -> Affine:
    """The whole sequence as one DIAGONAL element over the ``[dk, dv]`` state.

    Args:
      k: ``[B, T, H, dk]``.
      v: ``[B, T, H, dv]``.
      gate: ``[B, T, H]`` or ``[B, T, H, dk]``.
      chunk_size: chunk length of the pass that computes it.

    Returns:
      ``Affine(A [B, H, dk], b [B, H, dk, dv])``: ``A = prod_t g_t`` (per-head gates
      broadcast over dk), ``b`` the final state from a zero initial state; at least float32.
    """
    op = "gla_summary"
    _, k, v, gate, _ = _validate(None, k, v, gate, None, op, need_q=False)
    C = min(c.check_positive_int(chunk_size, "chunk_size", op), k.shape[1])
    dt = c.calc_dtype(k, v, gate)
    f, neg = _log_gates(gate.astype(dt), C)
    kc, vc = _chunk_layout(k.astype(dt), C), _chunk_layout(v.astype(dt), C)
    return c.fold_chunks(DIAGONAL, _summaries(kc, vc, f, neg), axis=2)


# ------------------------------------------------------------------------------------------
# public
# ------------------------------------------------------------------------------------------
def gated_linear_attention(
    q,
    k,
    v,
    gate,
    *,
    initial_state=None,
    scale: float = 1.0,
    chunk_size: int = 64,
    implementation: str = "auto",
    chunk_combine: str = "loop",
    axis_name=None,
    exchange: str = "all_gather",
):
    """Gated linear attention with per-head or per-key gates (negative gates allowed).

    ``S_t = diag(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

    Args:
      q: ``[B, T, H, dk]`` queries (not scaled implicitly).
      k: ``[B, T, H, dk]`` keys.
      v: ``[B, T, H, dv]`` values.
      gate: ``[B, T, H]`` (per head) or ``[B, T, H, dk]`` (per key), values in [-1, 1].
      initial_state: ``[B, H, dk, dv]``; zeros if None.
      scale: multiplies q.
      chunk_size: tokens per chunk of the chunked form (positive int). With per-key gates a
        multiple of 16 (or 8) uses sub-blocks (see the module docstring); 16 is the fastest
        on CPU (benchmarks/ops_cpu.md).
      implementation: "sequential" | "scan" | "chunked" | "pallas" | "auto".
      chunk_combine: chunked form across chunks: "loop" (``lax.scan``) or "scan"
        (``lrnn.scan``).
      axis_name: set inside ``jax.shard_map`` with the time axis sharded over this mesh axis.
      exchange: how shard summaries are exchanged (see ``lrnn.parallel``).

    Returns:
      ``(o [B, T, H, dv], final_state [B, H, dk, dv])``: o in the inputs' dtype, the final
      state in at least float32.
    """
    q, k, v, gate, S0 = _validate(q, k, v, gate, initial_state)
    B, T, H, dk = k.shape
    impl = c.resolve_implementation(implementation, _OP, "gated_linear_attention", family="gla",
                                    dims=dict(B=B, T=T, H=H, dk=dk), dtype=c.out_dtype(q, k, v))
    chunk_size = c.check_positive_int(chunk_size, "chunk_size", _OP)
    c.check_choice(chunk_combine, c.CHUNK_COMBINES, "chunk_combine", _OP)
    c.check_sequence_axis(axis_name, exchange, _OP)
    if c.empty(q, k, v, gate) and axis_name is None:
        impl = "sequential"
    c.check_scale(scale, _OP)
    out_dt = c.out_dtype(q, k, v)
    dt = c.calc_dtype(q, k, v, gate, S0)
    if axis_name is None:
        return _local(q, k, v, gate, S0, scale, chunk_size, impl, chunk_combine, out_dt, dt)
    # Sequence-parallel: one local pass from a zero state gives the outputs o_t^0 and the
    # summary's b (its final state); the summary's A and the running decays D_t = prod_{r<=t}
    # g_r are cumulative sums of log gates. After the exchange the true output is
    # o_t^0 + (scale q_t * D_t)^T S_in, an XLA matmul: no second pass from S_in.
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    z = c.varying_zeros((B, H, dk, dv), dt, axis_name)
    o0, b = _local(q, k, v, gate, z, scale, chunk_size, impl, chunk_combine, out_dt, dt)
    D = c.running_decay(gate.astype(dt), axis=1)  # [B, T, H] or [B, T, H, dk]
    if D.ndim == 3:
        D = D[..., None]
    A = jnp.broadcast_to(D[:, -1], (B, H, dk))
    h0 = jnp.zeros((B, H, dk, dv), dt) if S0 is None else S0.astype(dt)
    S_in, h_final = c.shard_prefix(DIAGONAL, Affine(A, b.astype(dt)), h0, axis_name=axis_name,
                                   exchange=exchange)
    qd = q.astype(dt) * (scale * D)
    o = o0.astype(dt) + c.einsum("bthk,bhkv->bthv", qd, S_in)
    return o.astype(out_dt), h_final


def _local(q, k, v, gate, S0, scale, chunk_size, impl, chunk_combine, out_dt, dt):
    """One device's pass (no sequence axis): ``(o in out_dt, final state)``."""
    if impl == "pallas":
        fn = c.pallas_fn("gated_linear_attention", _OP)
        return fn(q, k, v, gate, initial_state=S0, scale=scale, chunk_size=chunk_size,
                  interpret=None)
    B, T, H, dk = k.shape
    S0 = jnp.zeros((B, H, dk, v.shape[-1]), dt) if S0 is None else S0.astype(dt)
    qs = q.astype(dt) * scale
    k, v, gate = k.astype(dt), v.astype(dt), gate.astype(dt)
    if impl == "sequential":
        o, S = _sequential(qs, k, v, gate, S0)
    elif impl == "scan":
        o, S = _scan(qs, k, v, gate, S0)
    else:
        o, S = _chunked(qs, k, v, gate, S0, min(chunk_size, T), chunk_combine)
    return o.astype(out_dt), S


def gated_linear_attention_step(q, k, v, gate, *, state=None, scale: float = 1.0):
    """One token of gated linear attention (decoding); repeated use equals the sequence.

    Args:
      q: ``[B, H, dk]``.
      k: ``[B, H, dk]``.
      v: ``[B, H, dv]``.
      gate: ``[B, H]`` or ``[B, H, dk]``.
      state: ``[B, H, dk, dv]`` the previous state; zeros if None.
      scale: multiplies q.

    Returns:
      ``(o [B, H, dv] in the inputs' dtype, new state [B, H, dk, dv] in at least float32)``.
    """
    op = "gated_linear_attention_step"
    k = c.as_float(k, "k", op)
    c.check_shape(k, (None, None, None), "k", op, "[B, H, dk]")
    B, H, dk = k.shape
    q = c.as_float(q, "q", op)
    c.check_shape(q, k.shape, "q", op, "[B, H, dk] like k")
    v = c.as_float(v, "v", op)
    c.check_shape(v, (B, H, None), "v", op, "[B, H, dv]")
    gate = c.as_float(gate, "gate", op)
    if gate.ndim == 2:
        c.check_shape(gate, (B, H), "gate", op, "[B, H] (per head)")
    else:
        c.check_shape(gate, (B, H, dk), "gate", op, "[B, H] or [B, H, dk] (per key)")
    c.check_scale(scale, op)
    dt = c.calc_dtype(q, k, v, gate, state)
    if state is None:
        state = jnp.zeros((B, H, dk, v.shape[-1]), dt)
    else:
        state = c.as_float(state, "state", op)
        c.check_shape(state, (B, H, dk, v.shape[-1]), "state", op, "[B, H, dk, dv]")
    S, o = _token(state.astype(dt), q.astype(dt) * scale, k.astype(dt), v.astype(dt),
                  gate.astype(dt))
    return o.astype(c.out_dtype(q, k, v)), S
