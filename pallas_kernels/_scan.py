"""`linear_scan(a, b, axis, reverse)`: the inclusive scan of affine maps `h -> a h + b` along an
axis of a kernel value, as one primitive with a Triton lowering.

The composition of an earlier map `(a1, b1)` with a later one `(a2, b2)` is `(a1 a2, a2 b1 + b2)`;
the scan returns `(A_t, B_t)` with `h_t = A_t h_in + B_t` for the recurrence `h_t = a_t h_{t-1} +
b_t` inside a tile. The Pallas Triton lowering only exposes `cumsum` as a scan, so this module
registers a lowering of its own to Triton's `tt.scan` (a log-depth scan in registers and warp
shuffles): that is what lets `pallas_kernels.linear_recurrence` process a `[Tt, BD]` tile
without Tt dependent steps. Elsewhere (interpret mode, XLA) the primitive is
`lax.associative_scan` with the same combine, so the CPU tests run the same algorithm.

`AVAILABLE` is False when this jax's Triton lowering internals are not what this module expects
(it uses `jax._src.pallas.triton.lowering.register_lowering` and the Triton dialect bindings);
the kernels then keep their per-row form.
"""

from __future__ import annotations

import jax
from jax import lax
from jax.interpreters import mlir

try:  # jax >= 0.4.36
    from jax.extend.core import Primitive
except ImportError:  # pragma: no cover - older jax
    from jax.core import Primitive


def _combine(x, y):
    a1, b1 = x
    a2, b2 = y
    return a1 * a2, a2 * b1 + b2


def _impl(a, b, *, axis, reverse):
    return list(lax.associative_scan(_combine, (a, b), axis=axis, reverse=reverse))


linear_scan_p = Primitive("lrnn_linear_scan")
linear_scan_p.multiple_results = True
linear_scan_p.def_impl(_impl)
linear_scan_p.def_abstract_eval(
    lambda a, b, *, axis, reverse: [jax.core.ShapedArray(a.shape, a.dtype),
                                    jax.core.ShapedArray(b.shape, b.dtype)])
mlir.register_lowering(linear_scan_p, mlir.lower_fun(_impl, multiple_results=True))


def linear_scan(a, b, axis: int = 0, reverse: bool = False):
    """`(A, B)`: the inclusive scan of `(a_t, b_t)` along `axis` (reversed: from the end)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"a and b must have one shape and dtype; got {a.shape} {a.dtype}, "
                         f"{b.shape} {b.dtype}")
    return tuple(linear_scan_p.bind(a, b, axis=int(axis), reverse=bool(reverse)))


def _register_triton():
    from jax._src.lib.mlir import ir
    from jax._src.lib.mlir.dialects import arith
    from jax._src.lib.triton import dialect as tt
    from jax._src.pallas.triton import lowering as tl

    def rule(ctx, a, b, *, axis, reverse):
        del ctx
        op = tt.ScanOp([a, b], axis, reverse)
        elt = ir.RankedTensorType(a.type).element_type
        entry = op.regions[0].blocks.append(elt, elt, elt, elt)
        with ir.InsertionPoint.at_block_begin(entry):
            a1, b1, a2, b2 = entry.arguments
            tt.scan_return([arith.mulf(a1, a2), arith.addf(arith.mulf(a2, b1), b2)])
        op.verify()
        return list(op.result)

    tl.register_lowering(linear_scan_p)(rule)


try:
    _register_triton()
    AVAILABLE = True
except Exception:  # noqa: BLE001 - any mismatch of the internals: fall back, never fail import
    AVAILABLE = False
