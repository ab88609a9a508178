"""fla's op signatures on top of :mod:`lrnn.ops`: drop-in calls for code written for fla.

``chunk_delta_rule``, ``fused_recurrent_delta_rule``, ``chunk_gated_delta_rule``,
``chunk_gla`` and ``chunk_simple_gla`` take fla's arguments in fla's order, with fla's
defaults and conventions, and run :func:`lrnn.ops.delta_rule` or
:func:`lrnn.ops.gated_linear_attention`:

- tensors ``[B, T, H, K]`` (fla's ``head_first=False``; ``head_first`` was removed from fla
  and is refused here too), states ``[B, H, K, V]`` (``[B, H, V, K]`` with
  ``state_v_first=True``), as in lrnn;
- ``g`` is a log-space decay: the state is multiplied by ``exp(g)`` (lrnn's ops take the
  gate itself, so ``gate = exp(g)``); per head ``[B, T, H]`` for the gated delta rule and
  simple GLA, per key ``[B, T, H, K]`` for GLA; ``g_gamma [H]`` is a constant per-head log
  decay;
- ``scale=None`` means ``K ** -0.5`` (lrnn's ops never scale q implicitly);
- returns ``(o, final_state)`` with ``final_state`` None unless ``output_final_state``;
  ``o`` in q's dtype, the final state in at least float32 (fla: float32);
- ``use_qk_l2norm_in_kernel`` l2-normalises q and k (``x / sqrt(sum x^2 + 1e-6)``, fla's
  eps) before the recurrence.

Beyond fla's arguments each function takes the keyword-only ``chunk_size`` (None: the lrnn
op's default) and ``implementation`` ("auto" by default; see :mod:`lrnn.ops`). fla restricts
``chunk_size`` to 16/32/64 for the delta rules; lrnn takes any positive int.

Not supported, each raising an error that says so: variable-length batches (``cu_seqlens``,
``cu_seqlens_cpu``, ``chunk_indices``: NotImplementedError until lrnn has variable-length
sequences), fla's context parallelism (``cp_context``: NotImplementedError; lrnn's ops do
sequence parallelism with ``axis_name``), per-value beta ``[B, T, H, V]`` in
``fused_recurrent_delta_rule`` (NotImplementedError).

The signatures follow the newest fla source at hand when this was written (the
fla-org/flash-linear-attention snapshot at commit bc3b101d, whose ``__version__`` reads
"0.5.2"; the benchmarks run fla 0.6.0). If 0.6.0's signatures differ (e.g. in the optional
arguments of ``chunk_gated_delta_rule``), the GPU comparison test against fla shows it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lrnn.ops import _common as c
from lrnn.ops.delta import delta_rule
from lrnn.ops.gla import gated_linear_attention

__all__ = [
    "chunk_delta_rule",
    "fused_recurrent_delta_rule",
    "chunk_gated_delta_rule",
    "chunk_gla",
    "chunk_simple_gla",
]

L2NORM_EPS = 1e-6  # fla's l2norm eps (fla.modules.l2norm)


# ------------------------------------------------------------------------------------------
# argument handling shared by the entry points
# ------------------------------------------------------------------------------------------
def _no_varlen(op, **args):
    """NotImplementedError for any variable-length / context-parallel argument that is set."""
    for name, value in args.items():
        if value is not None:
            raise NotImplementedError(
                f"{op}: {name} is not supported: lrnn has no variable-length sequences yet "
                f"(pad the sequences to one length and run them as a batch)"
                if name != "cp_context" else
                f"{op}: cp_context (fla's context parallelism) is not supported; lrnn.ops's "
                f"delta_rule / gated_linear_attention take axis_name= inside jax.shard_map")


def _check_kwargs(op, kwargs, allowed=()):
    """fla's ``**kwargs``: ``head_first`` refused as fla does, unknown names a TypeError."""
    if "head_first" in kwargs:
        raise ValueError(f"{op}: head_first has been removed from fla and is not supported: "
                         f"inputs are [B, T, H, ...]")
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{op}: unexpected keyword argument(s) {unknown}")


def _scale(scale, dk, op):
    if scale is None:
        return dk ** -0.5
    return c.check_scale(scale, op)


def _l2norm(x):
    """fla's ``l2norm``: ``x / sqrt(sum x^2 + eps)`` over the last axis, in at least f32."""
    xf = x.astype(c.calc_dtype(x))
    return (xf * jax.lax.rsqrt(jnp.sum(xf * xf, -1, keepdims=True) + L2NORM_EPS)).astype(x.dtype)


def _state_in(initial_state, state_v_first, op):
    if initial_state is None or not state_v_first:
        return initial_state
    s = c.as_float(initial_state, "initial_state", op)
    if s.ndim != 4:
        raise ValueError(f"{op}: initial_state must have shape [B, H, V, K] with "
                         f"state_v_first=True, got {s.shape}")
    return jnp.swapaxes(s, -1, -2)


def _finish(o, S, q_dtype, output_final_state, state_v_first, op):
    """fla's return convention: ``(o in q's dtype, final state or None)``."""
    if not c.check_bool(output_final_state, "output_final_state", op):
        S = None
    elif state_v_first:
        S = jnp.swapaxes(S, -1, -2)
    return o.astype(q_dtype), S


def _extras(chunk_size, implementation):
    kw = dict(implementation=implementation)
    if chunk_size is not None:
        kw["chunk_size"] = chunk_size
    return kw


def _log_gate(g, shape, doc, name, op):
    """``exp(g)`` in at least float32, g checked against ``shape``."""
    g = c.as_float(g, name, op)
    c.check_shape(g, shape, name, op, doc)
    return jnp.exp(g.astype(c.calc_dtype(g)))


# ------------------------------------------------------------------------------------------
# delta rules
# ------------------------------------------------------------------------------------------
def chunk_delta_rule(
    q,
    k,
    v,
    beta,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens=None,
    cu_seqlens_cpu=None,
    *,
    chunk_size: int | None = None,
    implementation: str = "auto",
    **kwargs,
):
    """DeltaNet with fla's ``chunk_delta_rule`` signature, on :func:`lrnn.ops.delta_rule`.

    ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T``, ``o_t = S_t^T (scale q_t)``.

    Args:
      q: ``[B, T, H, K]``.
      k: ``[B, T, H, K]`` (unit norm by convention, or ``use_qk_l2norm_in_kernel=True``).
      v: ``[B, T, H, V]``.
      beta: ``[B, T, H]``.
      scale: multiplies q; None means ``K ** -0.5``.
      initial_state: ``[B, H, K, V]`` or None (zeros).
      output_final_state: whether to return the final state.
      use_qk_l2norm_in_kernel: l2-normalise q and k first.
      cu_seqlens, cu_seqlens_cpu: variable-length batches: NotImplementedError unless None.
      chunk_size: tokens per chunk of the chunked form; None: lrnn's default.
      implementation: as in :func:`lrnn.ops.delta_rule`.
      **kwargs: fla's; ``head_first`` is refused (ValueError), other names are a TypeError.

    Returns:
      ``(o [B, T, H, V] in q's dtype, final_state [B, H, K, V] (at least float32) or None)``.
    """
    op = "chunk_delta_rule"
    _check_kwargs(op, kwargs)
    _no_varlen(op, cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu)
    return _delta(op, q, k, v, beta, None, scale, initial_state, output_final_state,
                  use_qk_l2norm_in_kernel, False, _extras(chunk_size, implementation))


def fused_recurrent_delta_rule(
    q,
    k,
    v,
    beta=None,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens=None,
    *,
    chunk_size: int | None = None,
    implementation: str = "auto",
):
    """DeltaNet with fla's ``fused_recurrent_delta_rule`` signature.

    The same recurrence as :func:`chunk_delta_rule`; fla's token-loop kernel corresponds to
    ``implementation="sequential"``, and "auto" (the default) picks lrnn's fastest.

    Args:
      q, k, v, initial_state, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens,
        chunk_size, implementation: as in :func:`chunk_delta_rule`.
      beta: ``[B, T, H]``; None means ones. fla's per-value beta ``[B, T, H, V]`` is not
        supported (NotImplementedError).
      scale: positive; None means ``K ** -0.5``.

    Returns:
      ``(o [B, T, H, V] in q's dtype, final_state [B, H, K, V] or None)``.
    """
    op = "fused_recurrent_delta_rule"
    _no_varlen(op, cu_seqlens=cu_seqlens)
    q = c.as_float(q, "q", op)
    if beta is None:
        beta = jnp.ones(q.shape[:3], q.dtype)
    beta = c.as_float(beta, "beta", op)
    if beta.ndim == 4:
        raise NotImplementedError(f"{op}: per-value beta [B, T, H, V] is not supported "
                                  f"(lrnn's delta rule takes one beta per head: [B, T, H])")
    if scale is not None and isinstance(c.check_scale(scale, op), int | float) and scale <= 0:
        raise ValueError(f"{op}: scale must be positive, got {scale!r}")
    return _delta(op, q, k, v, beta, None, scale, initial_state, output_final_state,
                  use_qk_l2norm_in_kernel, False, _extras(chunk_size, implementation))


def chunk_gated_delta_rule(
    q,
    k,
    v,
    g,
    beta,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens=None,
    cu_seqlens_cpu=None,
    chunk_indices=None,
    cp_context=None,
    *,
    chunk_size: int | None = None,
    implementation: str = "auto",
    **kwargs,
):
    """Gated DeltaNet with fla's ``chunk_gated_delta_rule`` signature.

    ``S <- exp(g_t) S``, then ``S <- S + beta_t k_t (v_t - S^T k_t)^T``;
    ``o_t = S_t^T (scale q_t)``: :func:`lrnn.ops.delta_rule` with ``gate = exp(g)``.

    Args:
      q: ``[B, T, H, K]``.
      k: ``[B, T, H, K]``.
      v: ``[B, T, HV, V]``; ``HV`` a multiple of H (grouped value heads: value head j reads
        q/k head ``j // (HV // H)``).
      g: ``[B, T, HV]`` log decay (or, with ``use_gate_in_kernel=True``, the raw input of
        ``-exp(A_log) * softplus(g + dt_bias)``).
      beta: ``[B, T, HV]`` (raw logits with ``use_beta_sigmoid_in_kernel=True``).
      scale: multiplies q; None means ``K ** -0.5``.
      initial_state: ``[B, HV, K, V]`` (``[B, HV, V, K]`` with ``state_v_first``) or None.
      output_final_state: whether to return the final state.
      use_qk_l2norm_in_kernel: l2-normalise q and k first.
      use_beta_sigmoid_in_kernel: beta <- sigmoid(beta).
      allow_neg_eigval: with ``use_beta_sigmoid_in_kernel``, beta <- 2 sigmoid(beta).
      state_v_first: states in ``[V, K]`` layout.
      cu_seqlens, cu_seqlens_cpu, chunk_indices, cp_context: NotImplementedError unless None.
      chunk_size, implementation: as in :func:`chunk_delta_rule`.
      **kwargs: fla's ``use_gate_in_kernel`` (bool), ``A_log [HV]``, ``dt_bias [HV]``;
        ``head_first`` is refused (ValueError), other names are a TypeError.

    Returns:
      ``(o [B, T, HV, V] in q's dtype, final_state [B, HV, K, V] or None)``.
    """
    op = "chunk_gated_delta_rule"
    _check_kwargs(op, kwargs, ("use_gate_in_kernel", "A_log", "dt_bias"))
    _no_varlen(op, cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu,
               chunk_indices=chunk_indices, cp_context=cp_context)
    q, k, v = (c.as_float(x, n, op) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    c.check_shape(k, (None,) * 4, "k", op, "[B, T, H, K]")
    c.check_shape(q, k.shape, "q", op, "[B, T, H, K] like k")
    B, T, H, _ = k.shape
    c.check_shape(v, (B, T, None, None), "v", op, "[B, T, HV, V]")
    HV = v.shape[2]
    if HV % H:
        raise ValueError(f"{op}: the value heads HV = {HV} must be a multiple of the q/k "
                         f"heads H = {H}")
    g = c.as_float(g, "g", op)
    c.check_shape(g, (B, T, HV), "g", op, "[B, T, HV]")
    if c.check_bool(kwargs.get("use_gate_in_kernel", False), "use_gate_in_kernel", op):
        if kwargs.get("A_log") is None:
            raise ValueError(f"{op}: A_log must be given with use_gate_in_kernel=True")
        dt = c.calc_dtype(g)
        A_log = c.as_float(kwargs["A_log"], "A_log", op)
        c.check_shape(A_log, (HV,), "A_log", op, "[HV]")
        x = g.astype(dt)
        if kwargs.get("dt_bias") is not None:
            dt_bias = c.as_float(kwargs["dt_bias"], "dt_bias", op)
            c.check_shape(dt_bias, (HV,), "dt_bias", op, "[HV]")
            x = x + dt_bias.astype(dt)
        g = -jnp.exp(A_log.astype(dt)) * jax.nn.softplus(x)
    beta = c.as_float(beta, "beta", op)
    c.check_shape(beta, (B, T, HV), "beta", op, "[B, T, HV]")
    if c.check_bool(allow_neg_eigval, "allow_neg_eigval", op) and not use_beta_sigmoid_in_kernel:
        raise ValueError(f"{op}: allow_neg_eigval=True requires use_beta_sigmoid_in_kernel=True")
    if c.check_bool(use_beta_sigmoid_in_kernel, "use_beta_sigmoid_in_kernel", op):
        bdt = c.calc_dtype(beta)
        beta = ((2.0 if allow_neg_eigval else 1.0) * jax.nn.sigmoid(beta.astype(bdt)))
    return _delta(op, q, k, v, beta, g, scale, initial_state, output_final_state,
                  use_qk_l2norm_in_kernel, state_v_first, _extras(chunk_size, implementation),
                  grouped=True)


def _delta(op, q, k, v, beta, g, scale, initial_state, output_final_state, l2norm,
           state_v_first, extras, grouped=False):
    q, k = c.as_float(q, "q", op), c.as_float(k, "k", op)
    c.check_shape(k, (None,) * 4, "k", op, "[B, T, H, K]")
    q_dtype = q.dtype
    if c.check_bool(l2norm, "use_qk_l2norm_in_kernel", op):
        q, k = _l2norm(q), _l2norm(k)
    v = c.as_float(v, "v", op)
    if grouped and v.shape[2] != k.shape[2]:  # value head j reads q/k head j // rep
        rep = v.shape[2] // k.shape[2]
        q, k = jnp.repeat(q, rep, axis=2), jnp.repeat(k, rep, axis=2)
    gate = None if g is None else jnp.exp(g.astype(c.calc_dtype(g)))
    S0 = _state_in(initial_state, c.check_bool(state_v_first, "state_v_first", op), op)
    o, S = delta_rule(q, k, v, beta, gate=gate, initial_state=S0,
                      scale=_scale(scale, k.shape[-1], op), **extras)
    return _finish(o, S, q_dtype, output_final_state, state_v_first, op)


# ------------------------------------------------------------------------------------------
# gated linear attention
# ------------------------------------------------------------------------------------------
def chunk_gla(
    q,
    k,
    v,
    g,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    state_v_first: bool = False,
    cu_seqlens=None,
    cu_seqlens_cpu=None,
    *,
    chunk_size: int | None = None,
    implementation: str = "auto",
):
    """GLA (per-key decay) with fla's ``chunk_gla`` signature.

    ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``:
    :func:`lrnn.ops.gated_linear_attention` with ``gate = exp(g)``.

    Args:
      q, k: ``[B, T, H, K]``.
      v: ``[B, T, H, V]``.
      g: ``[B, T, H, K]`` log decay per key.
      scale: multiplies q; None means ``K ** -0.5``.
      initial_state: ``[B, H, K, V]`` (``[B, H, V, K]`` with ``state_v_first``) or None.
      output_final_state: whether to return the final state.
      state_v_first: states in ``[V, K]`` layout.
      cu_seqlens, cu_seqlens_cpu: NotImplementedError unless None.
      chunk_size, implementation: as in :func:`lrnn.ops.gated_linear_attention` (None: its
        default chunk size).

    Returns:
      ``(o [B, T, H, V] in q's dtype, final_state [B, H, K, V] or None)``.
    """
    op = "chunk_gla"
    _no_varlen(op, cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu)
    q = c.as_float(q, "q", op)
    c.check_shape(q, (None,) * 4, "q", op, "[B, T, H, K]")
    gate = _log_gate(g, q.shape, "[B, T, H, K] like q", "g", op)
    return _gla(op, q, k, v, gate, scale, initial_state, output_final_state, state_v_first,
                _extras(chunk_size, implementation))


def chunk_simple_gla(
    q,
    k,
    v,
    g=None,
    g_gamma=None,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    state_v_first: bool = False,
    cu_seqlens=None,
    cu_seqlens_cpu=None,
    *,
    chunk_size: int | None = None,
    implementation: str = "auto",
    **kwargs,
):
    """GLA with a per-head decay, fla's ``chunk_simple_gla`` signature.

    ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``, with g per head and
    token, or the constant ``g_gamma`` per head, or no decay when both are None.

    Args:
      q, k: ``[B, T, H, K]``.
      v: ``[B, T, H, V]``.
      g: ``[B, T, H]`` log decay, or None.
      g_gamma: ``[H]`` data-independent log decay, or None (at most one of g, g_gamma).
      scale, initial_state, output_final_state, state_v_first, cu_seqlens, cu_seqlens_cpu,
        chunk_size, implementation: as in :func:`chunk_gla`.
      **kwargs: fla's; ``chunk_size`` is this function's own keyword, ``head_first`` is
        refused (ValueError), other names are a TypeError.

    Returns:
      ``(o [B, T, H, V] in q's dtype, final_state [B, H, K, V] or None)``.
    """
    op = "chunk_simple_gla"
    _check_kwargs(op, kwargs)
    _no_varlen(op, cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu)
    q = c.as_float(q, "q", op)
    c.check_shape(q, (None,) * 4, "q", op, "[B, T, H, K]")
    B, T, H, _ = q.shape
    if g is not None and g_gamma is not None:
        raise ValueError(f"{op}: give at most one of g and g_gamma")
    if g is not None:
        gate = _log_gate(g, (B, T, H), "[B, T, H]", "g", op)
    elif g_gamma is not None:
        gate = jnp.broadcast_to(_log_gate(g_gamma, (H,), "[H]", "g_gamma", op), (B, T, H))
    else:
        gate = jnp.ones((B, T, H), c.calc_dtype(q))
    return _gla(op, q, k, v, gate, scale, initial_state, output_final_state, state_v_first,
                _extras(chunk_size, implementation))


def _gla(op, q, k, v, gate, scale, initial_state, output_final_state, state_v_first, extras):
    S0 = _state_in(initial_state, c.check_bool(state_v_first, "state_v_first", op), op)
    o, S = gated_linear_attention(q, k, v, gate, initial_state=S0,
                                  scale=_scale(scale, q.shape[-1], op), **extras)
    return _finish(o, S, q.dtype, output_final_state, state_v_first, op)
