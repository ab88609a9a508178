"""The task protocol, a base class for sequence tasks, and the generic loss and accuracy.

See the ``experiments.tasks`` package docstring for the protocol in words.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp

__all__ = ["Task", "SequenceTask", "masked_cross_entropy", "accuracy"]


@runtime_checkable
class Task(Protocol):
    """What every task provides (token tasks and image tasks alike)."""

    name: str
    kind: str  # "tokens" | "image"
    vocab_size: int
    num_classes: int
    channels: int
    train_sizes: tuple[int, int]
    test_sizes: tuple[int, int]
    chance: float

    def sample(self, key: jax.Array, batch: int, size: int):
        """``(inputs, labels, mask)`` for ``batch`` examples of size ``size``."""
        ...

    def train_batch(self, key: jax.Array, batch: int):
        """One fixed-shape batch of the training distribution."""
        ...

    def eval_sizes(self, lo: int | None = None, hi: int | None = None) -> list[int]:
        """The sizes evaluated in ``[lo, hi]`` (defaults: ``test_sizes``)."""
        ...


class SequenceTask:
    """Base for token tasks whose answer sits at the last token of each example.

    Subclasses set the class attributes and implement :meth:`_generate`, which draws
    ``size`` tokens per example and the label each prefix would have, given the length of
    each example (positions at or beyond the length are replaced by ``pad_id`` here).

    Attributes:
      num_symbols: number of task symbols; token ids ``0 .. num_symbols - 1``, and
        ``pad_id = num_symbols``.
      odd_lengths: expressions only exist at odd lengths; an even length ``L`` is rounded
        down to ``L - 1`` (the example is then one token shorter than asked).
    """

    name: str = "sequence"
    kind: str = "tokens"
    num_symbols: int = 2
    num_classes: int = 2
    channels: int = 0
    chance: float = 0.5
    odd_lengths: bool = False
    symbols: tuple[str, ...] = ()

    def __init__(
        self,
        train_sizes: tuple[int, int] = (3, 40),
        test_sizes: tuple[int, int] = (40, 256),
    ):
        self.train_sizes = tuple(train_sizes)
        self.test_sizes = tuple(test_sizes)
        if not 1 <= self.train_sizes[0] <= self.train_sizes[1]:
            raise ValueError(f"train_sizes must satisfy 1 <= lo <= hi, got {train_sizes}")
        if not 1 <= self.test_sizes[0] <= self.test_sizes[1]:
            raise ValueError(f"test_sizes must satisfy 1 <= lo <= hi, got {test_sizes}")

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 1

    @property
    def pad_id(self) -> int:
        return self.num_symbols

    def __repr__(self) -> str:
        return f"{type(self).__name__}(train={self.train_sizes}, test={self.test_sizes})"

    # --- what subclasses implement ---------------------------------------------------------
    def _generate(self, key: jax.Array, lengths: jax.Array, size: int):
        """Tokens ``[B, size]`` (valid before ``lengths``) and labels ``[B, size]``.

        ``labels[i, t]`` is the answer for the prefix ``tokens[i, : t + 1]``; only
        ``t = lengths[i] - 1`` is used.
        """
        raise NotImplementedError

    # --- the protocol ------------------------------------------------------------------------
    def effective_lengths(self, lengths: jax.Array) -> jax.Array:
        """The lengths actually generated (odd-only tasks round even lengths down)."""
        lengths = jnp.asarray(lengths, jnp.int32)
        if self.odd_lengths:
            lengths = lengths - (1 - lengths % 2)
        return jnp.maximum(lengths, 1)

    def sample_lengths(self, key: jax.Array, lengths: jax.Array, size: int):
        """Examples of the given lengths, padded to ``size``.

        Args:
          key: PRNG key.
          lengths: ``[B]`` int lengths, each in ``[1, size]``.
          size: static padded length ``T``.

        Returns:
          ``inputs [B, T] int32``, ``labels [B, T] int32``, ``mask [B, T] float32`` (1 at
          position ``length - 1`` of each example).
        """
        lengths = self.effective_lengths(lengths)
        tokens, labels = self._generate(key, lengths, size)
        pos = jnp.arange(size)[None, :]
        valid = pos < lengths[:, None]
        inputs = jnp.where(valid, tokens, self.pad_id).astype(jnp.int32)
        mask = (pos == lengths[:, None] - 1).astype(jnp.float32)
        return inputs, labels.astype(jnp.int32), mask

    def sample(self, key: jax.Array, batch: int, size: int):
        """``batch`` examples of length ``size`` (rounded down to odd for odd-only tasks)."""
        return self.sample_lengths(key, jnp.full((batch,), size, jnp.int32), size)

    def train_batch(self, key: jax.Array, batch: int):
        """Lengths uniform in ``train_sizes``, padded to the largest."""
        lo, hi = self.train_sizes
        k_len, k_tok = jax.random.split(key)
        lengths = jax.random.randint(k_len, (batch,), lo, hi + 1)
        return self.sample_lengths(k_tok, lengths, hi)

    def eval_sizes(self, lo: int | None = None, hi: int | None = None) -> list[int]:
        lo = self.test_sizes[0] if lo is None else lo
        hi = self.test_sizes[1] if hi is None else hi
        return list(range(lo, hi + 1))

    def decode(self, tokens) -> str:
        """Human-readable string of one example's tokens (padding dropped)."""
        return " ".join(self.symbols[int(t)] for t in tokens if int(t) != self.pad_id)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross entropy over the positions where ``mask`` is 1 (computed in float32).

    Args:
      logits: ``labels.shape + (num_classes,)``.
      labels: int ``[...]``.
      mask: ``[...]``, 0 or 1.
    """
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    # a one-hot product, not take_along_axis: its gradient needs no scatter
    picked = jnp.sum(logits * jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), -1)
    nll = (logz - picked) * mask
    return nll.sum() / jnp.maximum(mask.sum(), 1.0)


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Fraction of masked positions whose argmax equals the label."""
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * mask
    return hit.sum() / jnp.maximum(mask.sum(), 1.0)
