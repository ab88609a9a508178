"""Sequence mixers: each projects its input to gates and calls an ``lrnn.ops`` op.

Every mixer maps ``x [B, T, D] -> y [B, T, D]`` and has a recurrent form for decoding:
``init_state(batch, max_len)`` and ``step(x_t [B, D], state) -> (y_t [B, D], state)``, whose
repeated use equals the full-sequence output (tested in tests/test_nn.py). The linear ones
(diagonal, gla, deltaproduct, slice) also take ``mixer(x, *, state=None, return_state=False)``:
the full-sequence form from a given state, returning ``(y, final_state)`` if asked, so that
a prefill continues by ``step`` (tested in tests/test_layers.py; their keyword-constructor
faces are in :mod:`lrnn.nn.recurrent`). A state is a dict of float32 arrays, holding the
short convolution's last ``K - 1`` inputs under ``"conv"`` where the mixer has one.

Mixers with an eigenvalue range also expose ``eigenvalues(x)``: the per-token eigenvalues of
their transitions (diagonal gates, ``1 - beta`` of the Householder steps), for inspection.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

import lrnn.ops as ops
from lrnn import parallel, transitions
from lrnn.nn.config import ModelConfig
from lrnn.nn.layers import CausalConv1D, l2_normalize, rope

__all__ = [
    "DiagonalMixer",
    "GLAMixer",
    "DeltaProductMixer",
    "SliceMixer",
    "LSTMMixer",
    "AttentionMixer",
    "MIXERS",
]


def _signed(cfg: ModelConfig) -> bool:
    return cfg.eigen == "signed"  # "unit" or "signed" (ModelConfig checks it)


# [parallel] begin
def _no_sequence_axis(mixer: str) -> None:
    """Raises inside ``lrnn.parallel.sequence_sharded``: this mixer cannot split time."""
    if parallel.current_axis() is not None:
        raise NotImplementedError(
            f"the {mixer} mixer is not a linear recurrence and cannot run with its time axis "
            f"split over mesh axis {parallel.current_axis()!r} (sequence sharding); use a "
            "mesh without 'seq' or a linear mixer (diagonal, gla, deltanet, deltaproduct, slice)"
        )


def _state_unsharded(mixer: str, state, return_state: bool) -> None:
    """Raises inside ``lrnn.parallel.sequence_sharded`` when a state is passed or asked for:
    the layers thread states through unsharded calls only (prefill, then decoding)."""
    if (state is not None or return_state) and parallel.current_axis() is not None:
        raise NotImplementedError(
            f"the {mixer} layer takes state= and return_state=True only outside sequence "
            f"sharding (its time axis is split over mesh axis {parallel.current_axis()!r})"
        )
# [parallel] end


def _heads(cfg: ModelConfig, head_dim: int = 0) -> int:
    """The per-head size: ``head_dim`` if set, else ``d_model / heads`` (ModelConfig has
    checked that both are >= 1, head_dim >= 0)."""
    if head_dim:
        return head_dim
    if cfg.d_model % cfg.heads:
        raise ValueError(f"d_model={cfg.d_model} must be divisible by heads={cfg.heads}")
    return cfg.d_model // cfg.heads


# ------------------------------------------------------------------------------------------
# Mamba-style selective diagonal recurrence
# ------------------------------------------------------------------------------------------
class DiagonalMixer(nnx.Module):
    """Selective diagonal recurrence (Mamba-style), eigenvalues in [0, 1] or [-1, 1].

    Per channel c and state index n: ``h_t[c, n] = a_t[c, n] h_{t-1}[c, n] + dt_t[c] B_t[n]
    u_t[c]`` with ``a = exp(softplus(dt) A)`` (``A < 0``), or ``2a - 1`` for ``eigen="signed"``;
    ``y_t = (sum_n C_t[n] h_t[c, n] + D u_t) * silu(z_t)``.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, Di, N = cfg.d_model, cfg.expand * cfg.d_model, cfg.d_state
        dt = cfg.compute_dtype
        self.cfg, self.inner, self.n = cfg, Di, N
        self.signed = _signed(cfg)
        self.in_proj = nnx.Linear(D, 2 * Di, use_bias=False, dtype=dt, rngs=rngs)
        self.conv = CausalConv1D(Di, cfg.conv, rngs=rngs, dtype=dt) if cfg.conv else None
        self.dt_proj = nnx.Linear(Di, Di, dtype=dt, rngs=rngs)
        # softplus(dt_bias) spread over [1e-3, 1e-1] as in Mamba.
        u0 = jax.random.uniform(rngs.params(), (Di,))
        step0 = jnp.exp(u0 * math.log(100.0) + math.log(1e-3))
        self.dt_proj.bias = nnx.Param(step0 + jnp.log(-jnp.expm1(-step0)))
        self.bc_proj = nnx.Linear(Di, 2 * N, use_bias=False, dtype=dt, rngs=rngs)
        A0 = jnp.tile(jnp.arange(1, N + 1, dtype=jnp.float32), (Di, 1))  # S4D-real
        self.A_log = nnx.Param(jnp.log(A0))
        self.skip = nnx.Param(jnp.ones((Di,)))
        self.out_proj = nnx.Linear(Di, D, use_bias=False, dtype=dt, rngs=rngs)

    def _gates(self, u):
        """u: [..., Di] -> the selective_scan arguments (float32): delta [..., Di], A [Di, N],
        Bm, Cm [..., N]."""
        dt = self.dt_proj(u).astype(jnp.float32)
        Bm, Cm = jnp.split(self.bc_proj(u).astype(jnp.float32), 2, axis=-1)
        return jax.nn.softplus(dt), -jnp.exp(self.A_log[...]), Bm, Cm

    def _readout(self, y, u, z):
        y = y + self.skip[...] * u.astype(jnp.float32)
        y = y.astype(z.dtype) * jax.nn.silu(z)
        return self.out_proj(y)

    def _inputs(self, x, conv_state=None):
        """x: [..., T, D] -> (u, z, the conv's final state or None)."""
        u, z = jnp.split(self.in_proj(x), 2, axis=-1)
        if self.conv is None:
            return u, z, None
        u, conv_state = self.conv(u, conv_state, return_state=True)
        return jax.nn.silu(u), z, conv_state

    def eigenvalues(self, x: jax.Array) -> jax.Array:
        """x: ``[B, T, D]`` -> eigenvalues ``a_t`` ``[B, T, Di, N]``."""
        u = self._inputs(x)[0]
        delta, A, Bm, _ = self._gates(u)
        return ops.selective_gates(u.astype(jnp.float32), delta, A, Bm, signed=self.signed)[0]

    def __call__(self, x: jax.Array, *, state=None, return_state: bool = False):
        """x: ``[B, T, D]`` -> ``[B, T, D]`` (and the final state with ``return_state``).

        ``state``: the state before ``x`` (as :meth:`init_state` makes it); zeros if None.
        """
        _state_unsharded("diagonal", state, return_state)  # [parallel]
        u, z, conv = self._inputs(x, None if state is None else state.get("conv"))
        # the fused op: with "pallas" (GPU) the [B, T, Di, N] gates are never built
        uf = u.astype(jnp.float32)
        delta, A, Bm, Cm = self._gates(u)
        h0 = None if state is None else state["h"]
        y = ops.selective_scan(
            uf, delta, A, Bm, Cm, h0, signed=self.signed, implementation=self.cfg.implementation,
            chunk_size=self.cfg.chunk_size, **parallel.axis_kwargs(),  # [parallel] time sharding
        )
        y = self._readout(y, u, z)
        if not return_state:
            return y
        # selective_scan gives the outputs only: the final state is the sequence's summary
        # element applied to h0 (one chunked pass over the gates, only when asked for)
        B, T = uf.shape[:2]
        h = jnp.zeros((B, self.inner, self.n), jnp.float32) if h0 is None else h0
        if T:
            a, b = ops.selective_gates(uf, delta, A, Bm, signed=self.signed)
            summ = ops.linear_recurrence_summary(
                a.reshape(B, T, -1), b.reshape(B, T, -1), chunk_size=self.cfg.chunk_size)
            h = (summ.A * h.reshape(B, -1) + summ.b).reshape(B, self.inner, self.n)
        return y, self._state(h, conv)

    def _state(self, h, conv):
        return {"h": h} if conv is None else {"h": h, "conv": conv}

    def init_state(self, batch: int, max_len: int = 0):
        """``{"h": [B, Di, N], "conv": [B, K - 1, Di]}`` (no ``"conv"`` without a conv)."""
        conv = self.conv.init_state(batch) if self.conv is not None else None
        return self._state(jnp.zeros((batch, self.inner, self.n), jnp.float32), conv)

    def step(self, x: jax.Array, state):
        """x: ``[B, D]`` -> (``[B, D]``, state)."""
        u, z = jnp.split(self.in_proj(x), 2, axis=-1)
        conv = state.get("conv")
        if self.conv is not None:
            u, conv = self.conv.step(u, conv)
            u = jax.nn.silu(u)
        delta, A, Bm, Cm = self._gates(u)
        y, h = ops.selective_scan_step(u.astype(jnp.float32), delta, A, Bm, Cm, state["h"],
                                       signed=self.signed)
        return self._readout(y, u, z), self._state(h, conv)


# ------------------------------------------------------------------------------------------
# Gated linear attention
# ------------------------------------------------------------------------------------------
class GLAMixer(nnx.Module):
    """Gated linear attention with per-key gates ``g = sigmoid(x)^(1/16)`` (or ``2g - 1``).

    ``S_t = diag(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t / sqrt(dk)``, then a per-head
    RMSNorm, an output gate ``silu(z)`` and a projection.
    """

    gate_normalizer = 16.0

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, H, dh = cfg.d_model, cfg.heads, _heads(cfg)
        dt = cfg.compute_dtype
        self.cfg, self.H, self.dh = cfg, H, dh
        self.signed = _signed(cfg)
        self.qkvzg = nnx.Linear(D, 5 * D, use_bias=False, dtype=dt, rngs=rngs)
        self.gate_bias = nnx.Param(jnp.zeros((D,)))
        self.norm = nnx.RMSNorm(dh, dtype=dt, rngs=rngs)
        self.out_proj = nnx.Linear(D, D, use_bias=False, dtype=dt, rngs=rngs)

    def _project(self, x):
        shp = x.shape[:-1] + (self.H, self.dh)
        q, k, v, z, g = jnp.split(self.qkvzg(x), 5, axis=-1)
        logg = jax.nn.log_sigmoid(g.astype(jnp.float32) + self.gate_bias[...])
        gate = jnp.exp(logg / self.gate_normalizer)
        if self.signed:
            gate = 2.0 * gate - 1.0
        return q.reshape(shp), k.reshape(shp), v.reshape(shp), z, gate.reshape(shp)

    def _out(self, o, z):
        o = self.norm(o).reshape(z.shape)
        return self.out_proj(o * jax.nn.silu(z))

    def eigenvalues(self, x: jax.Array) -> jax.Array:
        """x: ``[B, T, D]`` -> per-key gates ``[B, T, H, dk]``."""
        return self._project(x)[4]

    def __call__(self, x: jax.Array, *, state=None, return_state: bool = False):
        """x: ``[B, T, D]`` -> ``[B, T, D]`` (and the final state with ``return_state``).

        ``state``: the state before ``x`` (as :meth:`init_state` makes it); zeros if None.
        """
        _state_unsharded("gla", state, return_state)  # [parallel]
        q, k, v, z, gate = self._project(x)
        o, S = ops.gated_linear_attention(
            q, k, v, gate, initial_state=None if state is None else state["S"],
            scale=self.dh**-0.5, chunk_size=self.cfg.chunk_size,
            implementation=self.cfg.implementation, **parallel.axis_kwargs(),  # [parallel]
        )
        y = self._out(o.astype(z.dtype), z)
        return (y, {"S": S}) if return_state else y

    def init_state(self, batch: int, max_len: int = 0):
        """``{"S": [B, H, dk, dv]}``."""
        return {"S": jnp.zeros((batch, self.H, self.dh, self.dh), jnp.float32)}

    def step(self, x: jax.Array, state):
        """x: ``[B, D]`` -> (``[B, D]``, state)."""
        q, k, v, z, gate = self._project(x)
        o, S = ops.gated_linear_attention_step(
            q, k, v, gate, state=state["S"], scale=self.dh**-0.5
        )
        return self._out(o.astype(z.dtype), z), {"S": S}


# ------------------------------------------------------------------------------------------
# DeltaNet / DeltaProduct (optionally gated)
# ------------------------------------------------------------------------------------------
class DeltaProductMixer(nnx.Module):
    """DeltaProduct: n_h Householder steps per token; DeltaNet is ``n_h = 1``.

    q, k and v are ``silu`` of projections (after a short causal convolution if ``conv``), as
    in fla; keys and queries are L2-normalised per head; ``beta = sigmoid`` (eigenvalues
    ``1 - beta`` in [0, 1]) or ``2 sigmoid`` ([-1, 1]); an optional forget gate
    ``exp(softplus(a) A)`` (Gated DeltaNet). Heads have ``head_dim`` (default
    ``d_model / heads``); the output is a per-head RMSNorm, an optional output gate
    ``silu(W_z x)`` (``out_gate``) and a projection back to ``d_model``.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, H, dh, nh = cfg.d_model, cfg.heads, _heads(cfg, cfg.head_dim), cfg.n_h
        dt = cfg.compute_dtype
        self.cfg, self.H, self.dh, self.nh = cfg, H, dh, nh
        inner = H * dh
        self.signed = _signed(cfg)
        self.q_proj = nnx.Linear(D, inner, use_bias=False, dtype=dt, rngs=rngs)
        self.k_proj = nnx.Linear(D, nh * inner, use_bias=False, dtype=dt, rngs=rngs)
        self.v_proj = nnx.Linear(D, nh * inner, use_bias=False, dtype=dt, rngs=rngs)
        self.b_proj = nnx.Linear(D, nh * H, dtype=dt, rngs=rngs)
        self.z_proj = (nnx.Linear(D, inner, use_bias=False, dtype=dt, rngs=rngs)
                       if cfg.out_gate else None)
        if cfg.conv:
            self.q_conv = CausalConv1D(inner, cfg.conv, rngs=rngs, dtype=dt)
            self.k_conv = CausalConv1D(nh * inner, cfg.conv, rngs=rngs, dtype=dt)
            self.v_conv = CausalConv1D(nh * inner, cfg.conv, rngs=rngs, dtype=dt)
        if cfg.forget_gate:
            self.a_proj = nnx.Linear(D, H, dtype=dt, rngs=rngs)
            A0 = jax.random.uniform(rngs.params(), (H,), minval=1, maxval=16)
            self.A_log = nnx.Param(jnp.log(A0))
        self.norm = nnx.RMSNorm(dh, dtype=dt, rngs=rngs)
        self.out_proj = nnx.Linear(inner, D, use_bias=False, dtype=dt, rngs=rngs)

    def _raw(self, x):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _finish(self, x, q, k, v):
        lead = x.shape[:-1]
        q = l2_normalize(q.reshape(lead + (self.H, self.dh)))
        k = l2_normalize(k.reshape(lead + (self.H, self.nh, self.dh)))
        v = v.reshape(lead + (self.H, self.nh, self.dh))
        beta = transitions.householder_beta(
            self.b_proj(x).astype(jnp.float32), signed=self.signed
        ).reshape(lead + (self.H, self.nh))
        gate = None
        if self.cfg.forget_gate:
            A = -jnp.exp(self.A_log[...])
            gate = transitions.mamba_gate(self.a_proj(x).astype(jnp.float32), A)
        return q, k, v, beta, gate

    def _out(self, o, x):
        o = self.norm(o.astype(x.dtype))
        o = o.reshape(o.shape[:-2] + (self.H * self.dh,))
        if self.z_proj is not None:
            o = o * jax.nn.silu(self.z_proj(x))
        return self.out_proj(o)

    def _project(self, x):
        """x: [B, T, D] -> (q, k, v, beta, gate) (from zero conv history)."""
        return self._project_state(x)[0]

    def _project_state(self, x, conv_state=None):
        """x: [B, T, D] -> ((q, k, v, beta, gate), the convs' final states or None)."""
        q, k, v = self._raw(x)
        conv = None
        if self.cfg.conv:
            cs = (None, None, None) if conv_state is None else conv_state
            convs = (self.q_conv, self.k_conv, self.v_conv)
            (q, cq), (k, ck), (v, cv) = (f(a, s, return_state=True)
                                         for f, a, s in zip(convs, (q, k, v), cs))
            conv = (cq, ck, cv)
        q, k, v = jax.nn.silu(q), jax.nn.silu(k), jax.nn.silu(v)
        return self._finish(x, q, k, v), conv

    def eigenvalues(self, x: jax.Array) -> jax.Array:
        """x: ``[B, T, D]`` -> Householder eigenvalues ``1 - beta`` ``[B, T, H, n_h]``."""
        return 1.0 - self._project(x)[3]

    def __call__(self, x: jax.Array, *, state=None, return_state: bool = False):
        """x: ``[B, T, D]`` -> ``[B, T, D]`` (and the final state with ``return_state``).

        ``state``: the state before ``x`` (as :meth:`init_state` makes it); zeros if None.
        """
        _state_unsharded("deltaproduct", state, return_state)  # [parallel]
        (q, k, v, beta, gate), conv = self._project_state(
            x, None if state is None else state.get("conv"))
        o, S = ops.delta_product(
            q, k, v, beta, gate=gate, initial_state=None if state is None else state["S"],
            scale=self.dh**-0.5, chunk_size=self.cfg.chunk_size,
            implementation=self.cfg.implementation, **parallel.axis_kwargs(),  # [parallel]
        )
        y = self._out(o, x)
        return (y, self._state(S, conv)) if return_state else y

    def _state(self, S, conv):
        return {"S": S} if conv is None else {"S": S, "conv": conv}

    def init_state(self, batch: int, max_len: int = 0):
        """``{"S": [B, H, dk, dv], "conv": (q, k, v) buffers [B, K - 1, C]}`` with ``C`` the
        width of each projection (no ``"conv"`` without a conv)."""
        conv = None
        if self.cfg.conv:
            conv = tuple(c.init_state(batch) for c in (self.q_conv, self.k_conv, self.v_conv))
        return self._state(jnp.zeros((batch, self.H, self.dh, self.dh), jnp.float32), conv)

    def step(self, x: jax.Array, state):
        """x: ``[B, D]`` -> (``[B, D]``, state)."""
        q, k, v = self._raw(x)
        conv = None
        if self.cfg.conv:
            cq, ck, cv = state["conv"]
            q, cq = self.q_conv.step(q, cq)
            k, ck = self.k_conv.step(k, ck)
            v, cv = self.v_conv.step(v, cv)
            conv = (cq, ck, cv)
        q, k, v = jax.nn.silu(q), jax.nn.silu(k), jax.nn.silu(v)
        q, k, v, beta, gate = self._finish(x, q, k, v)
        o, S = ops.delta_product_step(
            q, k, v, beta, gate=gate, state=state["S"], scale=self.dh**-0.5
        )
        return self._out(o, x), self._state(S, conv)


# ------------------------------------------------------------------------------------------
# SLiCE: structured, input-dependent transitions A_t = I + sum_i x_t^i A^i
# ------------------------------------------------------------------------------------------
class SliceMixer(nnx.Module):
    """Structured linear CDE (Walker et al. 2025): ``h_t = A_t h_{t-1} + W_b x_t``.

    ``A_t = I + sum_i x_t^i A^i`` with ``x_t = W_x x`` (``slice_inputs`` features, tanh) and
    ``A^i`` in the chosen structure; the output is ``W_o h_t``.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, n, di = cfg.d_model, cfg.slice_state or cfg.d_model, cfg.slice_inputs
        dt = cfg.compute_dtype
        self.cfg, self.n, self.di = cfg, n, di
        self.structure = cfg.structure
        if cfg.structure == "walsh_hadamard" and n & (n - 1):
            raise ValueError(
                f"the Walsh-Hadamard structure needs a power-of-two state size, got n = {n} "
                "(slice_state, or d_model where slice_state = 0)"
            )
        self.x_proj = nnx.Linear(D, di, dtype=dt, rngs=rngs)
        self.b_proj = nnx.Linear(D, n, use_bias=False, dtype=dt, rngs=rngs)
        self.out_proj = nnx.Linear(n, D, use_bias=False, dtype=dt, rngs=rngs)
        key = rngs.params()
        ks = jax.random.split(key, 3)
        scale = 0.5 / math.sqrt(di)
        s = cfg.structure
        if s in ("diagonal", "walsh_hadamard"):
            w = jax.random.normal(ks[0], (di, n)) * scale
            if s == "walsh_hadamard":  # H is orthonormal: keep sum_i x^i H diag(w_i) small
                w = w / math.sqrt(n)
            self.weights = nnx.Param(w)
        elif s == "block_diagonal":
            bs = cfg.block_size
            if n % bs:
                raise ValueError(f"slice_state={n} must be divisible by block_size={bs}")
            w = jax.random.normal(ks[0], (di, n // bs, bs, bs))
            self.weights = nnx.Param(w * scale / math.sqrt(bs))
        elif s == "dense":
            self.weights = nnx.Param(jax.random.normal(ks[0], (di, n, n)) * scale / math.sqrt(n))
        elif s == "sparse":
            self.weights = nnx.Param(jax.random.normal(ks[0], (di, n, n)) * scale / math.sqrt(n))
            self.mask = nnx.Variable(jax.random.bernoulli(ks[1], 0.25, (n, n)).astype(jnp.float32))
        elif s == "dplr":
            r = cfg.rank
            self.weights = nnx.Param(jax.random.normal(ks[0], (di, n)) * scale)
            self.u = nnx.Param(jax.random.normal(ks[1], (di, n, r)) * scale / math.sqrt(r))
            self.v = nnx.Param(jax.random.normal(ks[2], (di, n, r)) / math.sqrt(n))
        else:
            raise ValueError(
                f"unknown SLiCE structure {s!r}; valid: diagonal, block_diagonal, sparse, "
                "walsh_hadamard, dplr, dense"
            )

    def _weights(self):
        s = self.structure
        if s == "sparse":
            return (self.weights[...], self.mask[...])
        if s == "dplr":
            return (self.weights[...], self.u[...], self.v[...])
        return self.weights[...]

    def _drive(self, x):
        xi = self.x_proj(x).astype(jnp.float32)
        if self.cfg.slice_drive == "tanh":
            xi = jnp.tanh(xi)
        return xi, self.b_proj(x).astype(jnp.float32)

    def penalty(self) -> jax.Array:
        """``||A||_F`` of the structure's weights (SLiCE's regulariser is lambda times the sum
        of this over the layers; for DPLR the diagonal part, as in SLiCE's code)."""
        w = self.weights[...].astype(jnp.float32)
        return jnp.sqrt(jnp.sum(w * w))

    def __call__(self, x: jax.Array, *, state=None, return_state: bool = False):
        """x: ``[B, T, D]`` -> ``[B, T, D]`` (and the final state with ``return_state``).

        ``state``: the state before ``x`` (as :meth:`init_state` makes it); zeros if None.
        """
        _state_unsharded("slice", state, return_state)  # [parallel]
        xi, b = self._drive(x)
        h0 = None if state is None else state["h"]
        h = ops.structured_recurrence(
            xi, self._weights(), b, structure=self.structure, h0=h0,
            implementation=self.cfg.implementation, chunk_size=self.cfg.chunk_size,
            **parallel.axis_kwargs(),  # [parallel] time sharding
        )
        y = self.out_proj(h.astype(x.dtype))
        if not return_state:
            return y
        if h.shape[1]:
            final = h[:, -1].astype(jnp.float32)
        else:  # no tokens: the state is unchanged
            final = jnp.zeros((x.shape[0], self.n), jnp.float32) if h0 is None else h0
        return y, {"h": final}

    def init_state(self, batch: int, max_len: int = 0):
        """``{"h": [B, n]}``."""
        return {"h": jnp.zeros((batch, self.n), jnp.float32)}

    def step(self, x: jax.Array, state):
        """x: ``[B, D]`` -> (``[B, D]``, state)."""
        xi, b = self._drive(x)
        h = ops.structured_recurrence_step(xi, self._weights(), b, state["h"],
                                           structure=self.structure)
        return self.out_proj(h.astype(x.dtype)), {"h": h}


# ------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------
class LSTMMixer(nnx.Module):
    """A (nonlinear, sequential) LSTM layer: the ceiling on regular languages."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D = cfg.d_model
        self.D = D
        self.wx = nnx.Linear(D, 4 * D, dtype=cfg.compute_dtype, rngs=rngs)
        self.wh = nnx.Linear(D, 4 * D, use_bias=False, dtype=cfg.compute_dtype, rngs=rngs)
        # forget-gate bias 1
        self.wx.bias = nnx.Param(jnp.zeros((4 * D,)).at[D : 2 * D].set(1.0))

    def _cell(self, gx, carry):
        h, c = carry
        g = (gx + self.wh(h.astype(gx.dtype))).astype(jnp.float32)
        i, f, o, u = jnp.split(g, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c

    def __call__(self, x: jax.Array) -> jax.Array:
        _no_sequence_axis("lstm")  # [parallel]
        gx = self.wx(x)  # [B, T, 4D]
        carry0 = self.init_state(x.shape[0])

        def body(carry, g):
            carry = self._cell(g, carry)
            return carry, carry[0]

        _, hs = jax.lax.scan(body, carry0, jnp.swapaxes(gx, 0, 1))
        return jnp.swapaxes(hs, 0, 1).astype(x.dtype)

    def init_state(self, batch: int, max_len: int = 0):
        z = jnp.zeros((batch, self.D), jnp.float32)
        return (z, z)

    def step(self, x: jax.Array, state):
        h, c = self._cell(self.wx(x), state)
        return h.astype(x.dtype), (h, c)


class AttentionMixer(nnx.Module):
    """Causal multi-head softmax attention with rotary position embeddings."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, H, dh = cfg.d_model, cfg.heads, _heads(cfg)
        self.H, self.dh = H, dh
        self.qkv = nnx.Linear(D, 3 * D, use_bias=False, dtype=cfg.compute_dtype, rngs=rngs)
        self.out_proj = nnx.Linear(D, D, use_bias=False, dtype=cfg.compute_dtype, rngs=rngs)

    def _qkv(self, x, positions):
        shp = x.shape[:-1] + (self.H, self.dh)
        q, k, v = (t.reshape(shp) for t in jnp.split(self.qkv(x), 3, axis=-1))
        return rope(q, positions), rope(k, positions), v

    def __call__(self, x: jax.Array) -> jax.Array:
        _no_sequence_axis("transformer")  # [parallel]
        B, T, D = x.shape
        q, k, v = self._qkv(x, jnp.arange(T))
        s = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * self.dh**-0.5
        causal = jnp.tril(jnp.ones((T, T), bool))
        p = jax.nn.softmax(jnp.where(causal, s, -jnp.inf), axis=-1)
        o = jnp.einsum("bhts,bshd->bthd", p.astype(v.dtype), v)
        return self.out_proj(o.reshape(B, T, D))

    def init_state(self, batch: int, max_len: int):
        if max_len < 1:
            raise ValueError("the attention mixer needs max_len >= 1 for its KV cache")
        z = jnp.zeros((batch, max_len, self.H, self.dh), jnp.float32)
        return {"k": z, "v": z, "pos": jnp.zeros((), jnp.int32)}

    def step(self, x: jax.Array, state):
        B, D = x.shape
        pos = state["pos"]
        q, k, v = self._qkv(x[:, None], pos[None])
        kc = jax.lax.dynamic_update_slice_in_dim(state["k"], k.astype(jnp.float32), pos, axis=1)
        vc = jax.lax.dynamic_update_slice_in_dim(state["v"], v.astype(jnp.float32), pos, axis=1)
        s = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), kc) * self.dh**-0.5
        valid = jnp.arange(kc.shape[1]) <= pos
        p = jax.nn.softmax(jnp.where(valid, s, -jnp.inf), axis=-1)
        o = jnp.einsum("bhts,bshd->bthd", p, vc).astype(x.dtype)
        return self.out_proj(o.reshape(B, D)), {"k": kc, "v": vc, "pos": pos + 1}


def _deltanet(cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.n_h != 1:
        raise ValueError(f"deltanet has n_h = 1 (got n_h={cfg.n_h}); use --model deltaproduct")
    return DeltaProductMixer(cfg, rngs=rngs)


# Mixer name -> constructor(cfg, *, rngs).
MIXERS = {
    "diagonal": DiagonalMixer,
    "gla": GLAMixer,
    "deltanet": _deltanet,
    "deltaproduct": DeltaProductMixer,
    "slice": SliceMixer,
    "lstm": LSTMMixer,
    "transformer": AttentionMixer,
}
