"""The 2D pLSTM layer: a token mixer on a grid ``[B, X, Y, D]`` over :func:`lrnn.grid.plstm2d`.

Per cell the layer projects its input to queries, keys and values per head and to the
pre-activations of the gates; source, mark and direct gates are sigmoids, transitions tanh
(D-mode) or the P-mode parameterisation ``gamma (alpha, 1 - alpha)`` (angle and decay by
sigmoid). The heads are split into four equal groups, one per orientation of the grid (the
recurrence runs towards +x+y, -x+y, +x-y and -x-y), so every cell hears from every
direction; the groups' grids are flipped and stacked along the batch axis so that one call
of the op serves all four (:func:`four_orientations`). The head outputs are RMS-normalised
per head, multiplied by a SiLU output gate and projected back to D (the mLSTM read-out).

Gate biases start the transitions near 1 (P: ``gamma = sigmoid(3) ~ 0.95``, ``alpha = 1/2``;
D: ``tanh(1.5) ~ 0.9`` for the straight and ``tanh(1) ~ 0.76`` for the cross transition) so
that information travels far from the start.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lrnn import grid
from lrnn.nn.config import ModelConfig

__all__ = ["PLSTM2D", "four_orientations", "MODES", "N_ORIENTATIONS"]

MODES = ("P", "D")
N_ORIENTATIONS = 4
# pre-activation biases, in the argument order of grid.p_mode_gates / grid.d_mode_gates
_P_BIAS = (0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0)  # s_r, s_d, angle, decay, m_r, m_d, direct
_D_BIAS = (0.0, 0.0, 1.5, 1.5, 1.0, 0.0, 0.0, 0.0)  # s_r, s_d, t_r, t_d, t_cross, m_r, m_d, d


def four_orientations(q, k, v, gates: grid.PLSTMGates, *, implementation: str = "scan"):
    """Head group ``o`` (of 4 equal groups) runs :func:`lrnn.grid.plstm2d` in orientation ``o``.

    Flipping each group's grid turns every orientation into the natural one, so the four
    groups run as one call on a batch of ``4B`` grids.

    Args:
      q, k: ``[B, X, Y, H, dk]``; v: ``[B, X, Y, H, dv]``; gates: each ``[B, X, Y, H]``;
        H a multiple of 4.

    Returns:
      ``[B, X, Y, H, dv]``, equal to concatenating ``plstm2d(..., orientation=o)`` of the
      groups along H.
    """
    H = q.shape[3]
    if H % N_ORIENTATIONS:
        raise ValueError(f"four_orientations: the head axis H = {H} must be a multiple of 4")
    G = H // N_ORIENTATIONS
    group = lambda a, o: grid.flip_grid(a[:, :, :, o * G : (o + 1) * G], o)
    stack = lambda a: jnp.concatenate([group(a, o) for o in range(N_ORIENTATIONS)], 0)
    gates = grid.PLSTMGates(*(stack(a) for a in gates))
    y = grid.plstm2d(stack(q), stack(k), stack(v), gates, implementation=implementation)
    outs = [grid.flip_grid(a, o) for o, a in enumerate(jnp.split(y, N_ORIENTATIONS, 0))]
    return jnp.concatenate(outs, axis=3)


class PLSTM2D(nnx.Module):
    """2D pLSTM token mixer, ``x [B, X, Y, D] -> [B, X, Y, D]``.

    Args:
      d_model: width D (divisible by ``heads``); each head has ``dk = dv = D / heads``.
      heads: H, a multiple of 4 (``H / 4`` heads per orientation).
      mode: ``"P"`` (directed propagation) or ``"D"`` (diffusive, chirality ``"rd"``).
      implementation: passed to :func:`lrnn.grid.plstm2d` (``"scan"``, ``"sequential"`` or
        ``"auto"``).
      dtype: compute dtype of the projections (the recurrence accumulates in float32).
    """

    def __init__(
        self,
        d_model: int,
        heads: int = 4,
        *,
        mode: str = "P",
        implementation: str = "auto",
        rngs: nnx.Rngs,
        dtype=None,
    ):
        if mode not in MODES:
            raise ValueError(f"PLSTM2D: mode must be one of {MODES}, got {mode!r}")
        if heads % N_ORIENTATIONS:
            raise ValueError(
                f"PLSTM2D: heads must be a multiple of {N_ORIENTATIONS} (one group of heads "
                f"per orientation), got {heads}"
            )
        if d_model % heads:
            raise ValueError(f"PLSTM2D: d_model={d_model} must be divisible by heads={heads}")
        if implementation not in grid.IMPLEMENTATIONS:
            raise ValueError(
                f"PLSTM2D: implementation must be one of {grid.IMPLEMENTATIONS}, "
                f"got {implementation!r}"
            )
        self.d_model, self.heads, self.mode = d_model, heads, mode
        self.head_dim = d_model // heads
        self.implementation = implementation
        bias = _P_BIAS if mode == "P" else _D_BIAS
        self.n_gates = len(bias)
        self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=False, dtype=dtype, rngs=rngs)
        self.gates = nnx.Linear(
            d_model,
            heads * self.n_gates,
            dtype=dtype,
            kernel_init=nnx.initializers.normal(0.1 / d_model**0.5),
            bias_init=lambda *_: jnp.tile(jnp.asarray(bias, jnp.float32), heads),
            rngs=rngs,
        )
        self.out_gate = nnx.Linear(d_model, d_model, use_bias=False, dtype=dtype, rngs=rngs)
        self.norm_scale = nnx.Param(jnp.ones((heads, self.head_dim)))
        self.out = nnx.Linear(d_model, d_model, use_bias=False, dtype=dtype, rngs=rngs)

    def gate_values(self, x: jax.Array) -> grid.PLSTMGates:
        """The gates of every cell and head: PLSTMGates, each ``[B, X, Y, H]`` (float32)."""
        B, X, Y, _ = x.shape
        pre = self.gates(x).astype(jnp.float32).reshape(B, X, Y, self.heads, self.n_gates)
        pre = jnp.moveaxis(pre, -1, 0)
        if self.mode == "P":
            return grid.p_mode_gates(*pre)
        return grid.d_mode_gates(*pre, chirality="rd")

    @classmethod
    def from_config(cls, cfg: ModelConfig, rngs: nnx.Rngs, *, mode: str = "P") -> PLSTM2D:
        """The layer of ``cfg``'s fields (d_model, heads, implementation, dtype); ``mode`` is
        not a ModelConfig field (vision models alternate P and D layers)."""
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"PLSTM2D.from_config: cfg must be an lrnn.nn.ModelConfig, got "
                            f"{type(cfg).__name__}")
        return cls(cfg.d_model, cfg.heads, mode=mode, implementation=cfg.implementation,
                   dtype=cfg.compute_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, state=None, return_state: bool = False) -> jax.Array:
        """x ``[B, X, Y, D]`` -> ``[B, X, Y, D]``.

        ``state`` / ``return_state`` (the sequence layers' keywords) raise: the four head
        groups run towards +x+y, -x+y, +x-y and -x-y, so a cell's output depends on cells on
        every side of it; no order of the cells makes the layer causal, hence no carried
        state, ``init_state`` or token-by-token ``step``.
        """
        if state is not None or return_state:
            raise NotImplementedError(
                "PLSTM2D has no recurrent state to pass or return: its four orientations make "
                "every cell depend on cells on all sides (no causal order, no step decoding)"
            )
        if x.ndim != 4 or x.shape[-1] != self.d_model:
            raise ValueError(f"PLSTM2D: x must have shape [B, X, Y, {self.d_model}], got {x.shape}")
        B, X, Y, D = x.shape
        H, dh = self.heads, self.head_dim
        q, k, v = jnp.split(self.qkv(x).reshape(B, X, Y, 3 * H, dh), 3, axis=3)
        q = q * dh**-0.5
        h = four_orientations(q, k, v, self.gate_values(x), implementation=self.implementation)
        h = h.astype(jnp.float32)  # [B, X, Y, H, dh]
        h = h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + 1e-6) * self.norm_scale[...]
        h = h.reshape(B, X, Y, D).astype(x.dtype) * jax.nn.silu(self.out_gate(x))
        return self.out(h)
