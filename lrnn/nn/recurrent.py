"""The public recurrent layers: explicit keyword constructors over the mixers.

Each layer is its mixer (:mod:`lrnn.nn.mixers`: the same parameters, the same math), built
from keywords instead of a whole :class:`~lrnn.nn.config.ModelConfig`; ``from_config(cfg,
rngs)`` builds it from the config's fields for the experiments. Every layer has

- ``layer(x, *, state=None, return_state=False)``: ``x [B, T, D] -> y [B, T, D]``; ``state``
  is the state before ``x`` (zeros if None); with ``return_state=True`` returns ``(y,
  final_state)``, so a prompt is prefilled with the chunked form and decoding continues from
  there;
- ``layer.init_state(batch)``: the zero state, a dict of float32 arrays (the recurrent state
  and, where the layer has a short convolution, its last ``conv - 1`` inputs);
- ``layer.step(x_t, state) -> (y_t, state)``: one token ``x_t [B, D]``; stepping through a
  sequence equals the full call.

(``state`` and ``return_state`` need an unsharded call: inside
``lrnn.parallel.sequence_sharded`` they raise.) The 2D layer ``PLSTM2D`` lives in
:mod:`lrnn.nn.plstm`: its recurrence runs in four orientations of the grid, so it has no
token-by-token form.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from lrnn.nn.config import ModelConfig
from lrnn.nn.mixers import DeltaProductMixer, DiagonalMixer, GLAMixer, SliceMixer

__all__ = ["DeltaNet", "GLA", "Diagonal", "SLiCE"]


def _dtype_name(dtype) -> str:
    """A compute dtype given as a name or a dtype -> its name ("float32" for None)."""
    if dtype is None or isinstance(dtype, str):
        return dtype or "float32"
    return jnp.dtype(dtype).name


def _config(layer: str, renames: dict[str, str], **fields) -> ModelConfig:
    """The ModelConfig of a layer's keywords; its errors name the layer and the keyword."""
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as e:
        msg = str(e).removeprefix("ModelConfig: ")
        for field, kw in renames.items():
            msg = msg.replace(field, kw)
        raise type(e)(f"{layer}: {msg}") from None


def _check_config(layer: str, cfg) -> None:
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"{layer}.from_config: cfg must be an lrnn.nn.ModelConfig, got "
                        f"{type(cfg).__name__}")


class DeltaNet(DeltaProductMixer):
    """DeltaNet (``n_h = 1``) and DeltaProduct (``n_h > 1`` Householder steps per token).

    See :class:`lrnn.nn.mixers.DeltaProductMixer` for the math.

    Args:
      d_model: width D.
      heads: H; each head has ``head_dim`` (default ``D / H``, then D divisible by H).
      n_h: Householder steps per token (1: DeltaNet, > 1: DeltaProduct).
      eigen: ``"signed"`` (``beta`` in [0, 2], eigenvalues in [-1, 1]) or ``"unit"`` ([0, 1]).
      forget_gate: a scalar forget gate per head (Gated DeltaNet / DeltaProduct).
      conv: kernel size of the short causal convolutions on q, k, v (0: none).
      chunk_size: tokens per chunk of the chunked form.
      implementation: of :func:`lrnn.ops.delta_product` ("auto", "chunked", ...).
      head_dim: key / value size per head (0: ``D / H``).
      out_gate: the output gate ``silu(W_z x)`` after the head norm.
      dtype: compute dtype, "float32" or "bfloat16" (parameters and states stay float32).
      rngs: the parameter initialisation keys.

    State: ``{"S": [B, H, dk, dv], "conv": (q, k, v) buffers}``, each buffer the last
    ``conv - 1`` projected inputs ``[B, conv - 1, C]`` (``C = H dk`` for q, ``n_h H dk`` for k
    and v); no ``"conv"`` when ``conv = 0``.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        n_h: int = 1,
        eigen: str = "signed",
        forget_gate: bool = False,
        conv: int = 4,
        chunk_size: int = 64,
        implementation: str = "auto",
        head_dim: int = 0,
        out_gate: bool = True,
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        cfg = _config(
            "DeltaNet", {}, mixer="deltanet" if n_h == 1 else "deltaproduct", d_model=d_model,
            heads=heads, n_h=n_h, eigen=eigen, forget_gate=forget_gate, conv=conv,
            chunk_size=chunk_size, implementation=implementation, head_dim=head_dim,
            out_gate=out_gate, dtype=_dtype_name(dtype))
        super().__init__(cfg, rngs=rngs)

    @classmethod
    def from_config(cls, cfg: ModelConfig, rngs: nnx.Rngs) -> DeltaNet:
        """The layer of ``cfg``'s fields (d_model, heads, n_h, eigen, forget_gate, conv,
        chunk_size, implementation, head_dim, out_gate, dtype)."""
        _check_config(cls.__name__, cfg)
        return cls(cfg.d_model, cfg.heads, n_h=cfg.n_h, eigen=cfg.eigen,
                   forget_gate=cfg.forget_gate, conv=cfg.conv, chunk_size=cfg.chunk_size,
                   implementation=cfg.implementation, head_dim=cfg.head_dim,
                   out_gate=cfg.out_gate, dtype=cfg.dtype, rngs=rngs)


class GLA(GLAMixer):
    """Gated linear attention with per-key gates (see :class:`lrnn.nn.mixers.GLAMixer`).

    Args:
      d_model: width D, divisible by ``heads``.
      heads: H; each head has ``dk = dv = D / H``.
      eigen: ``"signed"`` (gates in [-1, 1]) or ``"unit"`` ([0, 1]).
      chunk_size: tokens per chunk of the chunked form.
      implementation: of :func:`lrnn.ops.gated_linear_attention`.
      dtype: compute dtype, "float32" or "bfloat16".
      rngs: the parameter initialisation keys.

    State: ``{"S": [B, H, dk, dv]}`` (no convolution).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        *,
        eigen: str = "signed",
        chunk_size: int = 64,
        implementation: str = "auto",
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        cfg = _config("GLA", {}, mixer="gla", d_model=d_model, heads=heads, eigen=eigen,
                      chunk_size=chunk_size, implementation=implementation,
                      dtype=_dtype_name(dtype))
        super().__init__(cfg, rngs=rngs)

    @classmethod
    def from_config(cls, cfg: ModelConfig, rngs: nnx.Rngs) -> GLA:
        """The layer of ``cfg``'s fields (d_model, heads, eigen, chunk_size, implementation,
        dtype)."""
        _check_config(cls.__name__, cfg)
        return cls(cfg.d_model, cfg.heads, eigen=cfg.eigen, chunk_size=cfg.chunk_size,
                   implementation=cfg.implementation, dtype=cfg.dtype, rngs=rngs)


class Diagonal(DiagonalMixer):
    """Selective diagonal recurrence, Mamba-style (see :class:`lrnn.nn.mixers.DiagonalMixer`).

    Args:
      d_model: width D.
      d_state: state size N per channel.
      expand: inner width ``Di = expand * D``.
      eigen: ``"signed"`` (eigenvalues ``2 exp(dt A) - 1`` in [-1, 1]) or ``"unit"`` ([0, 1]).
      conv: kernel size of the short causal convolution on the inner input (0: none).
      chunk_size: tokens per chunk of the chunked form.
      implementation: of :func:`lrnn.ops.selective_scan`.
      dtype: compute dtype, "float32" or "bfloat16".
      rngs: the parameter initialisation keys.

    State: ``{"h": [B, Di, N], "conv": [B, conv - 1, Di]}`` (no ``"conv"`` when ``conv = 0``).
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 4,
        expand: int = 1,
        eigen: str = "signed",
        conv: int = 4,
        chunk_size: int = 64,
        implementation: str = "auto",
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        cfg = _config("Diagonal", {}, mixer="diagonal", d_model=d_model, d_state=d_state,
                      expand=expand, eigen=eigen, conv=conv, chunk_size=chunk_size,
                      implementation=implementation, dtype=_dtype_name(dtype))
        super().__init__(cfg, rngs=rngs)

    @classmethod
    def from_config(cls, cfg: ModelConfig, rngs: nnx.Rngs) -> Diagonal:
        """The layer of ``cfg``'s fields (d_model, d_state, expand, eigen, conv, chunk_size,
        implementation, dtype)."""
        _check_config(cls.__name__, cfg)
        return cls(cfg.d_model, d_state=cfg.d_state, expand=cfg.expand, eigen=cfg.eigen,
                   conv=cfg.conv, chunk_size=cfg.chunk_size, implementation=cfg.implementation,
                   dtype=cfg.dtype, rngs=rngs)


# SLiCE keyword -> the ModelConfig field it sets (the config prefixes them: it is shared)
_SLICE_RENAMES = {"slice_state": "state_size", "slice_inputs": "d_in", "slice_drive": "drive"}


class SLiCE(SliceMixer):
    """Structured linear CDE ``h_t = A_t h_{t-1} + W_b x_t`` (see
    :class:`lrnn.nn.mixers.SliceMixer`).

    Args:
      d_model: width D.
      structure: of ``A_t``, one of ``lrnn.transitions.STRUCTURES`` (``"block_diagonal"``,
        ``"walsh_hadamard"``, ``"dplr"``, ...).
      state_size: n (0: D); a power of two for ``"walsh_hadamard"``.
      d_in: the driving dimension (``x_t`` projected to it).
      drive: ``"tanh"`` (``tanh(W x + c)``) or ``"linear"``.
      block_size: block size of ``"block_diagonal"`` (divides n).
      rank: rank of ``"dplr"``.
      chunk_size: tokens per chunk of the chunked form.
      implementation: of :func:`lrnn.ops.structured_recurrence`.
      dtype: compute dtype, "float32" or "bfloat16".
      rngs: the parameter initialisation keys.

    State: ``{"h": [B, n]}`` (no convolution).
    """

    def __init__(
        self,
        d_model: int,
        *,
        structure: str = "block_diagonal",
        state_size: int = 0,
        d_in: int = 16,
        drive: str = "tanh",
        block_size: int = 4,
        rank: int = 2,
        chunk_size: int = 64,
        implementation: str = "auto",
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        cfg = _config("SLiCE", _SLICE_RENAMES, mixer="slice", d_model=d_model,
                      structure=structure, slice_state=state_size, slice_inputs=d_in,
                      slice_drive=drive, block_size=block_size, rank=rank,
                      chunk_size=chunk_size, implementation=implementation,
                      dtype=_dtype_name(dtype))
        super().__init__(cfg, rngs=rngs)

    @classmethod
    def from_config(cls, cfg: ModelConfig, rngs: nnx.Rngs) -> SLiCE:
        """The layer of ``cfg``'s fields (d_model, structure, slice_state, slice_inputs,
        slice_drive, block_size, rank, chunk_size, implementation, dtype)."""
        _check_config(cls.__name__, cfg)
        return cls(cfg.d_model, structure=cfg.structure, state_size=cfg.slice_state,
                   d_in=cfg.slice_inputs, drive=cfg.slice_drive, block_size=cfg.block_size,
                   rank=cfg.rank, chunk_size=cfg.chunk_size,
                   implementation=cfg.implementation, dtype=cfg.dtype, rngs=rngs)
