"""The model configuration shared by every mixer (a frozen dataclass, one comment per field).

Every field is checked when a config is made (``ModelConfig(...)``, ``dataclasses.replace``),
so a layer never sees a width of 0 or an unknown name: every layer is built from one. A
field a mixer does not use is checked too (a value out of range is a typo, as in
``experiments.train.check_config``); what depends on the mixer (``d_model`` divisible by
``heads``, the SLiCE block size, ...) is checked by the mixer.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np

from lrnn.ops import IMPLEMENTATIONS
from lrnn.transitions import STRUCTURES

__all__ = ["ModelConfig", "DTYPES"]

DTYPES = ("float32", "bfloat16")  # compute dtypes (the ops accumulate in float32)
EIGENS = ("unit", "signed")
SLICE_DRIVES = ("tanh", "linear")
# int fields: (name, what 0 means, or None where it must be >= 1)
_INTS = (("d_model", None), ("layers", None), ("heads", None),
         ("head_dim", "for d_model / heads"), ("n_h", None), ("d_state", None),
         ("expand", None), ("conv", "for no convolution"), ("slice_state", "for d_model"),
         ("slice_inputs", None), ("block_size", None), ("rank", None),
         ("mlp_ratio", "for no MLP"), ("chunk_size", None))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a sequence model built from one mixer type.

    Fields a mixer does not use are ignored by it (but checked: see the module docstring).
    Raises ValueError (a value out of range, an unknown name) or TypeError (a value of the
    wrong type) naming the field.
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

    def __post_init__(self):
        def fail(err, what):
            raise err(f"ModelConfig: {what}")

        if not isinstance(self.mixer, str):
            fail(TypeError, f"mixer must be a name (str), got {self.mixer!r}")
        for name, zero in _INTS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                fail(TypeError, f"{name} must be an int, got {v!r}")
            if v < (0 if zero else 1):
                fail(ValueError, f"{name} must be >= 1{f' (or 0 {zero})' if zero else ''}, "
                                 f"got {v!r}")
        for name in ("out_gate", "forget_gate"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                fail(TypeError, f"{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float | np.number):
            fail(TypeError, f"dropout must be a number, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:  # also refuses nan
            fail(ValueError, f"dropout must be in [0, 1), got {self.dropout}")
        if self.eigen not in EIGENS:
            fail(ValueError, f"eigen must be 'unit' or 'signed', got {self.eigen!r}")
        if self.structure not in STRUCTURES:
            fail(ValueError, f"unknown SLiCE structure {self.structure!r}; structure must be "
                             f"one of {STRUCTURES}")
        if self.slice_drive not in SLICE_DRIVES:
            fail(ValueError, f"slice_drive must be 'tanh' or 'linear', got {self.slice_drive!r}")
        if self.implementation not in IMPLEMENTATIONS:
            fail(ValueError, f"implementation must be one of {IMPLEMENTATIONS}, got "
                             f"{self.implementation!r}")
        if self.dtype not in DTYPES:
            fail(ValueError, f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)
