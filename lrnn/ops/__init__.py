"""The op layer: one function per recurrence, several interchangeable implementations.

Every op takes ``implementation=`` in "sequential" (``lax.scan`` over tokens: the reference),
"scan" (``lrnn.scan`` over per-token ``Affine`` elements), "chunked" (pure-JAX chunkwise
form), "pallas" (``pallas_kernels``) and "auto": the implementation measured fastest for the
call's shapes on this backend (``lrnn.ops._auto``, from ``experiments/bench/auto.py``'s
measurements), "chunked" where nothing was measured (TPU today). Each op has a single-token
``*_step`` for decoding whose repeated use equals the whole sequence, and a ``*_summary``
giving the whole sequence as one monoid element (used by sequence parallelism).
"""

from lrnn.ops import fla as fla  # fla's signatures (lrnn.ops.fla.chunk_gla, ...)
from lrnn.ops import reference
from lrnn.ops._common import IMPLEMENTATIONS
from lrnn.ops.delta import (
    delta_product,
    delta_product_step,
    delta_rule,
    delta_rule_step,
    delta_summary,
)
from lrnn.ops.gla import gated_linear_attention, gated_linear_attention_step, gla_summary
from lrnn.ops.linear_recurrence import (
    linear_recurrence,
    linear_recurrence_step,
    linear_recurrence_summary,
)
from lrnn.ops.selective import selective_gates, selective_scan, selective_scan_step
from lrnn.ops.structured import (
    structured_recurrence,
    structured_recurrence_step,
    structured_summary,
)

__all__ = [
    "IMPLEMENTATIONS",
    "linear_recurrence",
    "linear_recurrence_step",
    "linear_recurrence_summary",
    "gated_linear_attention",
    "gated_linear_attention_step",
    "gla_summary",
    "delta_product",
    "delta_product_step",
    "delta_rule",
    "delta_rule_step",
    "delta_summary",
    "selective_scan",
    "selective_scan_step",
    "selective_gates",
    "structured_recurrence",
    "structured_recurrence_step",
    "structured_summary",
    "reference",
]
