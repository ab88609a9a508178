"""Small building blocks shared by the mixers: gated MLP, short causal convolution, RoPE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lrnn import parallel  # [parallel]

__all__ = ["GatedMLP", "CausalConv1D", "rope", "l2_normalize"]


class GatedMLP(nnx.Module):
    """SwiGLU feed-forward: ``W_out (silu(W_g x) * W_u x)``.

    Args:
      d_model: model width D.
      hidden: hidden width F.
    """

    def __init__(self, d_model: int, hidden: int, *, rngs: nnx.Rngs, dtype=None):
        self.up = nnx.Linear(d_model, 2 * hidden, use_bias=False, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(hidden, d_model, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: ``[..., D]`` -> ``[..., D]``."""
        g, u = jnp.split(self.up(x), 2, axis=-1)
        return self.down(jax.nn.silu(g) * u)


class CausalConv1D(nnx.Module):
    """Depthwise causal convolution over time, ``y_t = sum_j w_j x_{t - K + 1 + j}``.

    The recurrent form keeps the last ``K - 1`` inputs as its state.

    Args:
      channels: number of channels C.
      kernel_size: K >= 1.
    """

    def __init__(self, channels: int, kernel_size: int, *, rngs: nnx.Rngs, dtype=None):
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.channels = channels
        self.dtype = dtype
        scale = 1.0 / kernel_size
        w = jax.random.uniform(rngs.params(), (kernel_size, channels), minval=-scale, maxval=scale)
        # The last tap sees the current token; start it near identity.
        w = w.at[-1].add(1.0)
        self.weight = nnx.Param(w)
        self.bias = nnx.Param(jnp.zeros((channels,)))

    def __call__(self, x: jax.Array, state: jax.Array | None = None, *,
                 return_state: bool = False):
        """x: ``[B, T, C]`` -> ``[B, T, C]``.

        ``state``: the ``K - 1`` inputs before ``x`` ``[B, K - 1, C]`` (zeros if None). With
        ``return_state`` returns ``(y, state)``, the state being the last ``K - 1`` inputs
        (of the history and ``x``), as :meth:`step` leaves it.
        """
        K, T = self.kernel_size, x.shape[1]
        w = self.weight[...].astype(x.dtype)
        if state is None:
            # [parallel] zeros unsharded; the previous shard's last K - 1 inputs under
            # lrnn.parallel.sequence_sharded (a halo), so sharded equals unsharded.
            xp = parallel.causal_pad(x, K - 1)
        else:
            xp = jnp.concatenate([state.astype(x.dtype), x], axis=1)
        y = sum(w[j] * xp[:, j : j + T] for j in range(K))
        y = y + self.bias[...].astype(x.dtype)
        if not return_state:
            return y
        final = xp[:, T:]  # [B, K - 1, C]
        return y, final.astype(jnp.float32 if state is None else state.dtype)

    def init_state(self, batch: int, dtype=jnp.float32) -> jax.Array:
        """Zero history ``[B, K - 1, C]``."""
        return jnp.zeros((batch, self.kernel_size - 1, self.channels), dtype)

    def step(self, x: jax.Array, state: jax.Array):
        """One token. x: ``[B, C]``, state ``[B, K - 1, C]`` -> (y ``[B, C]``, state)."""
        w = self.weight[...].astype(x.dtype)
        window = jnp.concatenate([state.astype(x.dtype), x[:, None]], axis=1)  # [B, K, C]
        y = jnp.einsum("bkc,kc->bc", window, w) + self.bias[...].astype(x.dtype)
        return y, window[:, 1:].astype(state.dtype)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Unit-norm along the last axis (computed in float32, cast back)."""
    xf = x.astype(jnp.float32)
    return (xf * jax.lax.rsqrt(jnp.sum(xf * xf, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding.

    Args:
      x: ``[..., T, H, d]`` with even d.
      positions: ``[T]`` (or broadcastable to the ``T`` axis) integer positions.
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rope needs an even head size, got {d}")
    freq = base ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    ang = positions.astype(jnp.float32)[..., None] * freq  # [T, d/2]
    cos, sin = jnp.cos(ang)[..., None, :], jnp.sin(ang)[..., None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(x.shape)
    return out.astype(x.dtype)
