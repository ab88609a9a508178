"""Float64 NumPy loops: the independent references the ops are tested against.

Written straight from the definitions in ARCHITECTURE.md, one token at a time, sharing no
code with the JAX implementations. Inputs may be any array-likes; everything is converted
to float64 NumPy arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = ["linear_recurrence", "gated_linear_attention", "delta_product", "delta_rule",
           "structured_recurrence", "selective_scan"]


def _f64(*xs):
    return [None if x is None else np.asarray(x, dtype=np.float64) for x in xs]


def linear_recurrence(a, b, h0=None):
    """``h_t = a_t * h_{t-1} + b_t``; a, b ``[B, T, D]``, h0 ``[B, D]`` -> h ``[B, T, D]``."""
    a, b, h0 = _f64(a, b, h0)
    h = np.zeros((a.shape[0], a.shape[2])) if h0 is None else h0.copy()
    out = np.zeros_like(b)
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out[:, t] = h
    return out


def selective_scan(u, delta, A, Bm, Cm, h0=None, signed=False):
    """Mamba: ``h_t = a_t * h_{t-1} + delta_t u_t B_t`` per channel with ``a_t = exp(delta_t A)``
    (``2a - 1`` if signed), ``y_t = h_t C_t``; u, delta ``[B, T, D]``, A ``[D, N]``, Bm, Cm
    ``[B, T, N]``, h0 ``[B, D, N]`` -> y ``[B, T, D]``."""
    u, delta, A, Bm, Cm, h0 = _f64(u, delta, A, Bm, Cm, h0)
    B, T, D = u.shape
    h = np.zeros((B, D, A.shape[1])) if h0 is None else h0.copy()
    y = np.zeros((B, T, D))
    for t in range(T):
        for d in range(D):
            a = np.exp(delta[:, t, d, None] * A[d])
            if signed:
                a = 2.0 * a - 1.0
            h[:, d] = a * h[:, d] + (delta[:, t, d] * u[:, t, d])[:, None] * Bm[:, t]
            y[:, t, d] = np.sum(h[:, d] * Cm[:, t], axis=-1)
    return y


def gated_linear_attention(q, k, v, gate, initial_state=None, scale=1.0):
    """``S_t = diag(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

    Returns ``(o [B, T, H, dv], final_state [B, H, dk, dv])``.
    """
    q, k, v, gate, S0 = _f64(q, k, v, gate, initial_state)
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    S = np.zeros((B, H, dk, dv)) if S0 is None else S0.copy()
    o = np.zeros((B, T, H, dv))
    for t in range(T):
        g = gate[:, t]
        g = g[..., None] if g.ndim == 3 else g[..., None, None]
        S = g * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return o, S


def delta_product(q, k, v, beta, gate=None, initial_state=None, scale=1.0):
    """Per token ``S <- gate S``, then for j < n_h ``S <- (I - b_j k_j k_j^T) S + b_j k_j v_j^T``.

    q ``[B, T, H, dk]``, k ``[B, T, H, n_h, dk]``, v ``[B, T, H, n_h, dv]``,
    beta ``[B, T, H, n_h]``, gate ``[B, T, H]`` or None. Returns ``(o, final_state)``.
    """
    q, k, v, beta, gate, S0 = _f64(q, k, v, beta, gate, initial_state)
    B, T, H, n_h, dk = k.shape
    dv = v.shape[-1]
    S = np.zeros((B, H, dk, dv)) if S0 is None else S0.copy()
    o = np.zeros((B, T, H, dv))
    eye = np.eye(dk)
    for t in range(T):
        if gate is not None:
            S = gate[:, t, :, None, None] * S
        for j in range(n_h):
            kj, vj, bj = k[:, t, :, j], v[:, t, :, j], beta[:, t, :, j]
            Hj = eye - bj[..., None, None] * kj[..., :, None] * kj[..., None, :]
            S = Hj @ S + bj[..., None, None] * kj[..., :, None] * vj[..., None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return o, S


def delta_rule(q, k, v, beta, gate=None, initial_state=None, scale=1.0):
    """:func:`delta_product` with n_h = 1: k ``[B, T, H, dk]``, v ``[B, T, H, dv]``,
    beta ``[B, T, H]``."""
    k, v, beta = _f64(k, v, beta)
    return delta_product(q, k[:, :, :, None], v[:, :, :, None], beta[..., None], gate,
                         initial_state, scale)


def structured_recurrence(A, b, h0=None):
    """``h_t = A_t h_{t-1} + b_t`` with dense ``A [B, T, n, n]``, ``b [B, T, n]``."""
    A, b, h0 = _f64(A, b, h0)
    h = np.zeros((b.shape[0], b.shape[2])) if h0 is None else h0.copy()
    out = np.zeros_like(b)
    for t in range(b.shape[1]):
        h = np.einsum("bij,bj->bi", A[:, t], h) + b[:, t]
        out[:, t] = h
    return out
