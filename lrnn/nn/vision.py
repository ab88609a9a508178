"""Image models: patch embedding, a pLSTM vision model and a small ViT baseline.

Both models map images ``[B, S_x, S_y, C]`` to logits ``[B, num_classes]``:
patch embed (``patch x patch`` patches, a linear map) -> blocks on the patch grid
``[B, X, Y, D]`` -> norm -> mean pool over the grid -> linear head. They differ only in the
token mixer: a 2D pLSTM (:class:`lrnn.nn.plstm.PLSTM2D`, P and D layers alternating, four
orientations) or softmax self-attention with learned position embeddings that are resized
bilinearly when the grid differs from the training grid (the usual ViT recipe at another
resolution). Any canvas whose sides are multiples of the patch size is accepted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lrnn.nn.layers import GatedMLP
from lrnn.nn.plstm import PLSTM2D

__all__ = ["PatchEmbed", "GridBlock", "PLSTMVision", "ViT", "SelfAttention2D"]


class PatchEmbed(nnx.Module):
    """Non-overlapping ``patch x patch`` patches, flattened and mapped linearly to D.

    Args:
      in_channels: C.
      d_model: D.
      patch: patch side P.
    """

    def __init__(self, in_channels: int, d_model: int, patch: int, *, rngs: nnx.Rngs, dtype=None):
        if patch < 1:
            raise ValueError(f"PatchEmbed: patch must be >= 1, got {patch}")
        self.patch, self.in_channels = patch, in_channels
        self.proj = nnx.Linear(patch * patch * in_channels, d_model, dtype=dtype, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images ``[B, S_x, S_y, C]`` -> patch tokens ``[B, S_x/P, S_y/P, D]``."""
        if images.ndim != 4 or images.shape[-1] != self.in_channels:
            raise ValueError(
                f"PatchEmbed: images must have shape [B, S_x, S_y, {self.in_channels}], "
                f"got {images.shape}"
            )
        B, Sx, Sy, C = images.shape
        P = self.patch
        if Sx % P or Sy % P:
            raise ValueError(
                f"PatchEmbed: image sides {Sx} x {Sy} must be multiples of the patch size {P}"
            )
        x = images.reshape(B, Sx // P, P, Sy // P, P, C).transpose(0, 1, 3, 2, 4, 5)
        return self.proj(x.reshape(B, Sx // P, Sy // P, P * P * C))


class SelfAttention2D(nnx.Module):
    """Bidirectional multi-head softmax attention over the cells of a grid.

    Args:
      d_model: D; heads: H (D divisible by H).
    """

    def __init__(self, d_model: int, heads: int, *, rngs: nnx.Rngs, dtype=None):
        if d_model % heads:
            raise ValueError(
                f"SelfAttention2D: d_model={d_model} must be divisible by heads={heads}"
            )
        self.heads = heads
        self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=False, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x ``[B, X, Y, D]`` -> ``[B, X, Y, D]``."""
        B, X, Y, D = x.shape
        H = self.heads
        q, k, v = jnp.split(self.qkv(x).reshape(B, X * Y, 3 * H, D // H), 3, axis=2)
        o = jax.nn.dot_product_attention(q, k, v)  # [B, N, H, dh]
        return self.out(o.reshape(B, X, Y, D))


class GridBlock(nnx.Module):
    """Pre-norm residual block on a grid: ``x + mixer(norm(x))``, ``x + mlp(norm(x))``."""

    def __init__(self, mixer: nnx.Module, d_model: int, mlp_ratio: int, *, rngs, dtype=None):
        self.norm1 = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)
        self.mixer = mixer
        if mlp_ratio:
            self.norm2 = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)
            self.mlp = GatedMLP(d_model, mlp_ratio * d_model, rngs=rngs, dtype=dtype)
        else:
            self.norm2 = self.mlp = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x ``[B, X, Y, D]`` -> ``[B, X, Y, D]``."""
        x = x + self.mixer(self.norm1(x)).astype(x.dtype)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x)).astype(x.dtype)
        return x


class _Classifier(nnx.Module):
    """Shared tail: norm -> mean pool over the grid -> head (float32 logits)."""

    def _head(self, x):
        pooled = jnp.mean(self.norm(x).astype(jnp.float32), axis=(1, 2))
        return self.head(pooled.astype(x.dtype)).astype(jnp.float32)


class PLSTMVision(_Classifier):
    """Patch embed -> pLSTM blocks (P, D, P, D, ...) -> norm -> mean pool -> head.

    Args:
      in_channels: image channels C.
      num_classes: output classes.
      patch: patch side P.
      d_model: width D.
      layers: number of blocks.
      heads: pLSTM heads H per block (a multiple of the number of orientations, 4).
      mlp_ratio: gated-MLP width factor (0: no MLP).
      implementation: ``lrnn.grid.plstm2d`` implementation (``"scan"``, ``"sequential"``,
        ``"auto"``).
      dtype: compute dtype (parameters stay float32).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        patch: int = 16,
        d_model: int = 64,
        layers: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        implementation: str = "auto",
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.embed = PatchEmbed(in_channels, d_model, patch, rngs=rngs, dtype=dtype)
        self.blocks = nnx.List(
            [
                GridBlock(
                    PLSTM2D(
                        d_model,
                        heads,
                        mode="P" if i % 2 == 0 else "D",
                        implementation=implementation,
                        rngs=rngs,
                        dtype=dtype,
                    ),
                    d_model,
                    mlp_ratio,
                    rngs=rngs,
                    dtype=dtype,
                )
                for i in range(layers)
            ]
        )
        self.norm = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(d_model, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        """images ``[B, S_x, S_y, C]`` -> logits ``[B, num_classes]`` (float32)."""
        x = self.embed(images)
        for blk in self.blocks:
            x = blk(x)
        return self._head(x)


class ViT(_Classifier):
    """A small Vision Transformer (no class token: mean pooling), the baseline.

    Args:
      in_channels, num_classes, patch, d_model, layers, heads, mlp_ratio, dtype: as for
        :class:`PLSTMVision`.
      grid: ``(X0, Y0)`` the patch grid of the training images; position embeddings are
        learned for it and resized bilinearly for other grids.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        grid: tuple[int, int],
        patch: int = 16,
        d_model: int = 64,
        layers: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.embed = PatchEmbed(in_channels, d_model, patch, rngs=rngs, dtype=dtype)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (*grid, d_model)))
        self.blocks = nnx.List(
            [
                GridBlock(
                    SelfAttention2D(d_model, heads, rngs=rngs, dtype=dtype),
                    d_model,
                    mlp_ratio,
                    rngs=rngs,
                    dtype=dtype,
                )
                for _ in range(layers)
            ]
        )
        self.norm = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(d_model, num_classes, dtype=dtype, rngs=rngs)

    def position_embedding(self, X: int, Y: int) -> jax.Array:
        """``[X, Y, D]``: the learned table, bilinearly resized when ``(X, Y)`` differs."""
        pos = self.pos[...]
        if pos.shape[:2] != (X, Y):
            pos = jax.image.resize(pos, (X, Y, pos.shape[-1]), method="bilinear")
        return pos

    def __call__(self, images: jax.Array) -> jax.Array:
        """images ``[B, S_x, S_y, C]`` -> logits ``[B, num_classes]`` (float32)."""
        x = self.embed(images)
        x = x + self.position_embedding(*x.shape[1:3]).astype(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self._head(x)
