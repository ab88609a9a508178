"""A causal language model over a list of layers: embedding -> blocks -> norm -> head.

``CausalLM(vocab_size, d_model, mixers, rngs=...)`` puts one pre-norm residual block around
each layer of ``mixers`` (``x + mixer(norm(x))``, then a gated MLP), so hybrids mix layer
kinds freely, e.g. ``[DeltaNet(...), GLA(...), AttentionMixer(...)]``. ``generate`` prefills
the prompt with the layers' chunked form and then steps one token at a time.

A layer *decodes* when it has ``init_state(batch)`` and ``step(x_t, state)`` and its call
takes ``state=`` and ``return_state=`` (the layers of :mod:`lrnn.nn.recurrent`). Any other
layer -- softmax attention, a user's module that only maps ``[B, T, D] -> [B, T, D]`` -- still
works in ``__call__``; with one in the list, ``generate`` falls back to a full call on the
whole (padded) sequence per new token, which needs every layer to be causal.
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrnn.nn.layers import GatedMLP
from lrnn.nn.model import Block, SequenceModel

__all__ = ["CausalLM"]


def _decodes(mixer) -> bool:
    """Whether ``mixer`` has the prefill-then-step interface (see the module docstring)."""
    if not all(callable(getattr(mixer, n, None)) for n in ("init_state", "step")):
        return False
    try:
        params = inspect.signature(mixer.__call__).parameters
    except (TypeError, ValueError):
        return False
    return "state" in params and "return_state" in params


class _MixerBlock(Block):
    """:class:`~lrnn.nn.model.Block` around a given layer instead of one named by a config.

    Its own ``__init__`` (Block's builds the mixer from a ModelConfig); ``__call__``, ``step``
    and the MLP branch are Block's. No dropout (``rate = 0``).
    """

    def __init__(self, mixer: nnx.Module, d_model: int, *, mlp_ratio: int, dtype, rngs):
        self.rate = 0.0
        self.norm1 = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)
        self.mixer = mixer
        if mlp_ratio:
            self.norm2 = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)
            self.mlp = GatedMLP(d_model, mlp_ratio * d_model, rngs=rngs, dtype=dtype)
        else:
            self.norm2 = self.mlp = None

    def prefill(self, x: jax.Array, state):
        """x: ``[B, T, D]`` from the mixer's ``state`` -> (``[B, T, D]``, final state)."""
        y, state = self.mixer(self.norm1(x), state=state, return_state=True)
        return self._mlp(x + y.astype(x.dtype)), state


def _check_int(name: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise TypeError(f"CausalLM: {name} must be an int, got {v!r}")
    if v < low:
        raise ValueError(f"CausalLM: {name} must be >= {low}, got {v}")
    return int(v)


def _check_tokens(name: str, tokens, ndim: int) -> jax.Array:
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"CausalLM: {name} must hold integer token ids, got dtype "
                        f"{tokens.dtype}")
    if tokens.ndim != ndim:
        want = "[B, T]" if ndim == 2 else "[B]"
        raise ValueError(f"CausalLM: {name} must be {want}, got shape {tokens.shape}")
    return tokens


class CausalLM(nnx.Module):
    """Next-token model: ``[B, T]`` ids -> logits ``[B, T, V]`` (float32).

    Args:
      vocab_size: V, the number of token ids (inputs and outputs).
      d_model: width D; every layer of ``mixers`` maps ``[B, T, D] -> [B, T, D]``.
      mixers: one built layer per block (``lrnn.nn.DeltaNet(D, heads, rngs=...)``, ...), in
        order; each must be causal. The model owns them (a layer may appear only once).
      mlp_ratio: hidden width ``mlp_ratio * D`` of each block's gated MLP (0: no MLP).
      dtype: compute dtype of the embedding, norms, MLPs and head, "float32" or "bfloat16"
        (the layers have their own).
      rngs: initialisation keys of the embedding, norms, MLPs and head.
    """

    # The embedding is SequenceModel's (one-hot product up to ONE_HOT_VOCAB ids, else a
    # gather): it only reads ``self.embed`` and ``ONE_HOT_VOCAB``.
    ONE_HOT_VOCAB = SequenceModel.ONE_HOT_VOCAB
    _embed = SequenceModel._embed

    def __init__(self, vocab_size: int, d_model: int, mixers, *, mlp_ratio: int = 2,
                 dtype: str = "float32", rngs: nnx.Rngs):
        vocab_size = _check_int("vocab_size", vocab_size, 1)
        d_model = _check_int("d_model", d_model, 1)
        mlp_ratio = _check_int("mlp_ratio", mlp_ratio, 0)
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"CausalLM: dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        if not isinstance(mixers, list | tuple):
            raise TypeError(f"CausalLM: mixers must be a list of layers, got "
                            f"{type(mixers).__name__}")
        if not mixers:
            raise ValueError("CausalLM: mixers is empty; give one layer per block, e.g. "
                             "[lrnn.nn.DeltaNet(d_model, heads, rngs=rngs)]")
        for i, m in enumerate(mixers):
            if isinstance(m, type):
                raise TypeError(f"CausalLM: mixers[{i}] is the class {m.__name__}; pass a "
                                "built layer, e.g. GLA(d_model, heads, rngs=rngs)")
            if not isinstance(m, nnx.Module):
                raise TypeError(f"CausalLM: mixers[{i}] must be a flax.nnx.Module, got "
                                f"{type(m).__name__}")
            if any(m is prev for prev in mixers[:i]):
                raise ValueError(f"CausalLM: mixers[{i}] is an earlier layer again; build a "
                                 "separate layer per block")
            width = getattr(getattr(m, "cfg", None), "d_model", d_model)
            if width != d_model:
                raise ValueError(f"CausalLM: mixers[{i}] has d_model={width}, the model "
                                 f"d_model={d_model}")
        dt = jnp.dtype(dtype)
        self.vocab_size = vocab_size
        self.decodes = all(_decodes(m) for m in mixers)  # generate: prefill + step
        self.embed = nnx.Embed(vocab_size, d_model, dtype=dt, rngs=rngs)
        self.blocks = nnx.List([_MixerBlock(m, d_model, mlp_ratio=mlp_ratio, dtype=dt,
                                            rngs=rngs) for m in mixers])
        self.norm = nnx.RMSNorm(d_model, dtype=dt, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab_size, dtype=dt, rngs=rngs)

    def _need_decoding(self, what: str) -> None:
        if not self.decodes:
            names = [type(b.mixer).__name__ for b in self.blocks if not _decodes(b.mixer)]
            raise ValueError(f"CausalLM: {what} needs layers with state=, return_state=, "
                             f"init_state and step; {', '.join(names)} has not")

    def _logits(self, x: jax.Array) -> jax.Array:
        return self.head(self.norm(x)).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, *, state=None, return_state: bool = False):
        """tokens: ``[B, T]`` int -> logits ``[B, T, V]`` (float32).

        ``state`` (from :meth:`init_state` or an earlier ``return_state=True``) is every
        layer's state before ``tokens``; ``return_state=True`` returns ``(logits,
        final_state)``. Both need decoding layers.
        """
        tokens = _check_tokens("tokens", tokens, 2)
        x = self._embed(tokens)
        if state is None and not return_state:
            for blk in self.blocks:
                x = blk(x)
            return self._logits(x)
        self._need_decoding("state= / return_state=")
        if state is None:
            state = self.init_state(tokens.shape[0])
        if len(state) != len(self.blocks):
            raise ValueError(f"CausalLM: state has {len(state)} layers, the model "
                             f"{len(self.blocks)}")
        new = []
        for blk, s in zip(self.blocks, state):
            x, s = blk.prefill(x, s)
            new.append(s)
        logits = self._logits(x)
        return (logits, new) if return_state else logits

    def init_state(self, batch: int) -> list:
        """The zero decoding state: a list of every layer's ``init_state(batch)``."""
        self._need_decoding("init_state")
        batch = _check_int("batch", batch, 1)
        return [blk.mixer.init_state(batch) for blk in self.blocks]

    def step(self, tokens: jax.Array, state):
        """One token per sequence: ``[B]`` ids -> (logits ``[B, V]``, state)."""
        self._need_decoding("step")
        x = self._embed(_check_tokens("tokens", tokens, 1))
        new = []
        for blk, s in zip(self.blocks, state):
            x, s = blk.step(x, s)
            new.append(s)
        return self._logits(x), new

    def generate(self, prompt: jax.Array, steps: int, *, key: jax.Array | None = None,
                 temperature: float = 0.0) -> jax.Array:
        """Continues ``prompt [B, P]`` (``P >= 1``) by ``steps`` tokens -> ``[B, P + steps]``
        int32.

        Decoding layers: one chunked call on the prompt (``return_state=True``), then
        ``step`` per new token. Otherwise one full call on the padded ``[B, P + steps]``
        sequence per new token (every layer must be causal). ``temperature = 0`` takes the
        argmax; ``> 0`` samples ``softmax(logits / temperature)`` with
        ``fold_in(key, i)`` for the i-th new token (a Python number; ``key`` required).
        """
        prompt = _check_tokens("prompt", prompt, 2)
        steps = _check_int("steps", steps, 0)
        if prompt.shape[0] < 1 or prompt.shape[1] < 1:
            raise ValueError(f"CausalLM: prompt must have B >= 1 and P >= 1 tokens, got "
                             f"shape {prompt.shape}")
        if not isinstance(prompt, jax.core.Tracer):
            lo, hi = int(prompt.min()), int(prompt.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"CausalLM: prompt ids must be in [0, {self.vocab_size}), "
                                 f"got [{lo}, {hi}]")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise TypeError(f"CausalLM: temperature must be a number, got {temperature!r}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"CausalLM: temperature must be finite and >= 0, got "
                             f"{temperature}")
        greedy = temperature == 0
        if not greedy and key is None:
            raise ValueError("CausalLM: sampling (temperature > 0) needs key=")
        if steps == 0:
            return prompt.astype(jnp.int32)
        graphdef, params = nnx.split(self)
        return _generate(graphdef, params, prompt.astype(jnp.int32),
                         jax.random.key(0) if key is None else key, jnp.float32(temperature),
                         steps=steps, greedy=greedy, decodes=self.decodes)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "greedy", "decodes"))
def _generate(graphdef, params, prompt, key, temperature, *, steps, greedy, decodes):
    """:meth:`CausalLM.generate` as a pure function of the model's state (``steps >= 1``)."""
    model = nnx.merge(graphdef, params)
    B, P = prompt.shape

    def pick(logits, i):  # logits [B, V] -> the i-th new token [B]
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        k = jax.random.fold_in(key, i)
        return jax.random.categorical(k, logits / temperature, axis=-1).astype(jnp.int32)

    if decodes:
        logits, state = model(prompt, return_state=True)  # prefill, chunked
        first = pick(logits[:, -1], 0)

        def body(carry, i):
            tok, state = carry
            logits, state = model.step(tok, state)
            tok = pick(logits, i)
            return (tok, state), tok

        _, rest = jax.lax.scan(body, (first, state), jnp.arange(1, steps))  # [steps - 1, B]
        return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)

    # Fallback: a full call per new token on a fixed-length buffer; the ids past the current
    # position are placeholders that a causal model does not see.
    buf = jnp.zeros((B, P + steps), jnp.int32).at[:, :P].set(prompt)

    def body(buf, i):
        logits = jax.lax.dynamic_index_in_dim(model(buf), P + i - 1, axis=1, keepdims=False)
        tok = pick(logits, i)
        return jax.lax.dynamic_update_index_in_dim(buf, tok, P + i, axis=1), None

    buf, _ = jax.lax.scan(body, buf, jnp.arange(steps))
    return buf
