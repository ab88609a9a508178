"""Pre-norm residual blocks and the sequence model (embedding -> blocks -> norm -> head)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrnn.nn.config import ModelConfig
from lrnn.nn.layers import GatedMLP
from lrnn.nn.mixers import MIXERS

__all__ = ["Block", "SequenceModel", "make_mixer"]


def make_mixer(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The mixer called ``cfg.mixer``; unknown names raise listing the valid ones."""
    if cfg.mixer not in MIXERS:
        raise ValueError(f"unknown mixer {cfg.mixer!r}; valid mixers: {', '.join(sorted(MIXERS))}")
    return MIXERS[cfg.mixer](cfg, rngs=rngs)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout with an explicit key; the identity when ``key`` is None or rate 0."""
    if key is None or not rate:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Block(nnx.Module):
    """``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` (gated MLP; omitted if mlp_ratio = 0).

    With ``cfg.dropout > 0`` and a ``dropout_key``, each branch's output is dropped out.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dt = cfg.compute_dtype
        self.rate = cfg.dropout  # in [0, 1) (ModelConfig checks it)
        self.norm1 = nnx.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
        self.mixer = make_mixer(cfg, rngs=rngs)
        if cfg.mlp_ratio:
            self.norm2 = nnx.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
            self.mlp = GatedMLP(cfg.d_model, cfg.mlp_ratio * cfg.d_model, rngs=rngs, dtype=dt)
        else:
            self.norm2 = self.mlp = None

    def _mlp(self, x, key=None):
        if self.mlp is None:
            return x
        return x + dropout(self.mlp(self.norm2(x)), self.rate, key)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """x: ``[B, T, D]`` -> ``[B, T, D]``."""
        k1 = k2 = None
        if dropout_key is not None and self.rate:
            k1, k2 = jax.random.split(dropout_key)
        y = dropout(self.mixer(self.norm1(x)).astype(x.dtype), self.rate, k1)
        return self._mlp(x + y, k2)

    def step(self, x: jax.Array, state):
        """x: ``[B, D]`` -> (``[B, D]``, state)."""
        y, state = self.mixer.step(self.norm1(x), state)
        return self._mlp(x + y.astype(x.dtype)), state


class SequenceModel(nnx.Module):
    """Token classifier at every position: ``[B, T]`` ids -> logits ``[B, T, num_classes]``.

    Args:
      cfg: the model configuration (mixer by name, widths, eigenvalue range, ...).
      vocab_size: number of input token ids.
      num_classes: number of output classes.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, num_classes: int, *, rngs: nnx.Rngs):
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"SequenceModel: cfg must be an lrnn.nn.ModelConfig, got "
                            f"{type(cfg).__name__}")
        for name, v in (("vocab_size", vocab_size), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise TypeError(f"SequenceModel: {name} must be an int, got {v!r}")
            if v < 1:
                raise ValueError(f"SequenceModel: {name} must be >= 1, got {v}")
        dt = cfg.compute_dtype
        self.cfg = cfg
        self.embed = nnx.Embed(vocab_size, cfg.d_model, dtype=dt, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.layers)])
        self.norm = nnx.RMSNorm(cfg.d_model, dtype=dt, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, num_classes, dtype=dt, rngs=rngs)

    # Vocabularies up to this size embed by a one-hot product instead of a gather: the
    # gather's gradient is a scatter-add of every token onto few rows, which GPUs serialise.
    ONE_HOT_VOCAB = 1024

    def _embed(self, tokens: jax.Array) -> jax.Array:
        table = self.embed.embedding[...]
        V, dt = table.shape[0], self.embed.dtype or table.dtype
        if V > self.ONE_HOT_VOCAB:
            return jnp.take(table, tokens, axis=0).astype(dt)
        oh = jax.nn.one_hot(tokens, V, dtype=table.dtype)
        # HIGHEST: exact rows (the default f32 precision may round to TF32 on GPUs)
        return jnp.dot(oh, table, precision=jax.lax.Precision.HIGHEST).astype(dt)

    def __call__(self, tokens: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """tokens: ``[B, T]`` int -> logits ``[B, T, C]`` (float32).

        ``dropout_key``: a PRNG key to train with dropout (``cfg.dropout``); None evaluates.
        """
        x = self._embed(tokens)
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if dropout_key is None else jax.random.fold_in(dropout_key, i))
        return self.head(self.norm(x)).astype(jnp.float32)

    def penalty(self) -> jax.Array:
        """Sum over the layers of the mixers' ``penalty()`` (0 for mixers without one): the
        SLiCE regulariser's ``sum ||A||_F``."""
        terms = [blk.mixer.penalty() for blk in self.blocks if hasattr(blk.mixer, "penalty")]
        return sum(terms, jnp.zeros((), jnp.float32))

    def mixer_inputs(self, tokens: jax.Array) -> list[jax.Array]:
        """The normalised input each block's mixer sees, ``[B, T, D]`` per layer."""
        x, out = self._embed(tokens), []
        for blk in self.blocks:
            out.append(blk.norm1(x))
            x = blk(x)
        return out

    def eigenvalues(self, tokens: jax.Array) -> list[jax.Array]:
        """Per-layer transition eigenvalues per token (mixers that define ``eigenvalues``)."""
        xs = self.mixer_inputs(tokens)
        return [blk.mixer.eigenvalues(x) for blk, x in zip(self.blocks, xs)]

    def init_state(self, batch: int, max_len: int = 0):
        """Decoding state of every layer (``max_len`` sizes the attention KV cache)."""
        return [blk.mixer.init_state(batch, max_len) for blk in self.blocks]

    def step(self, tokens: jax.Array, state):
        """One token per sequence: ``[B]`` ids -> (logits ``[B, C]``, state)."""
        x = self._embed(tokens)
        new = []
        for blk, s in zip(self.blocks, state):
            x, s = blk.step(x, s)
            new.append(s)
        return self.head(self.norm(x)).astype(jnp.float32), new
