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
