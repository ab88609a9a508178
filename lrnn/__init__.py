"""lrnn: linear recurrent networks with structured state transitions, as monoids in JAX.

Every recurrence is an affine map ``S -> A S + b``; affine maps form a monoid under
composition, and the same monoid drives the token scan, the chunkwise kernels and sequence
parallelism. See ``ARCHITECTURE`` in the README.
"""

from lrnn import grid, ops, parallel, transitions
from lrnn.monoid import (
    DENSE,
    DIAGONAL,
    Affine,
    BlockDiagonal,
    Dense,
    Diagonal,
    Monoid,
    compose,
    scan,
    scan_sequential,
)

__all__ = [
    "Affine",
    "Monoid",
    "Diagonal",
    "Dense",
    "BlockDiagonal",
    "DIAGONAL",
    "DENSE",
    "scan",
    "scan_sequential",
    "compose",
    "transitions",
    "ops",
    "parallel",
    "grid",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    # PEP 562: ``lrnn.nn`` (Flax) is imported on first use, so ``import lrnn`` stays light.
    if name == "nn":
        import importlib

        return importlib.import_module("lrnn.nn")
    raise AttributeError(f"module 'lrnn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "nn"])
