"""The model configuration shared by every mixer (a frozen dataclass, one comment per field)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

__all__ = ["ModelConfig"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a sequence model built from one mixer type.

    Fields a mixer does not use are ignored by it.
    """

    mixer: str = "diagonal"  # diagonal | gla | deltanet | deltaproduct | slice | lstm | transformer
    d_model: int = 64  # residual width D
    layers: int = 2  # number of blocks
    heads: int = 4  # heads H (gla, deltanet, deltaproduct, transformer)
    head_dim: int = 0  # key / value size per head of deltanet / deltaproduct (0: d_model / heads)
    out_gate: bool = True  # deltanet / deltaproduct: output gate silu(W_z x) after the head norm
    eigen: Literal["unit", "signed"] = "signed"  # eigenvalue range [0, 1] or [-1, 1]
    n_h: int = 1  # Householder steps per token (deltaproduct)
    d_state: int = 4  # per-channel state size N of the diagonal (Mamba-style) mixer
    expand: int = 1  # inner width of the diagonal mixer = expand * d_model
    conv: int = 4  # short causal convolution kernel size (0: none)
    forget_gate: bool = False  # gated DeltaNet / DeltaProduct (scalar forget gate per head)
    structure: str = "block_diagonal"  # SLiCE structure
    slice_state: int = 0  # SLiCE state size n (0: d_model)
    slice_inputs: int = 16  # SLiCE driving dimension d_in (x_t projected to it)
    slice_drive: Literal["tanh", "linear"] = "tanh"  # SLiCE drive: tanh(W x + c) or W x + c
    block_size: int = 4  # SLiCE block-diagonal block size
    rank: int = 2  # SLiCE DPLR rank
    mlp_ratio: int = 2  # gated-MLP hidden width = mlp_ratio * d_model (0: no MLP)
    dropout: float = 0.0  # dropout rate on each block's mixer and MLP outputs (training only)
    implementation: str = "auto"  # lrnn.ops: sequential | scan | chunked | pallas | auto
    chunk_size: int = 64  # chunk size of chunked ops
    dtype: str = "float32"  # compute dtype (float32 | bfloat16); parameters stay float32

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)
