"""Shared helpers of the Pallas kernels: backend choice, block specs, in-kernel linear algebra.

Everything here must lower on three paths: interpret mode (CPU), the Triton lowering (GPU) and
Mosaic (TPU). So in-kernel code uses 2-D arrays, 2-D dots with `preferred_element_type`,
`lax.broadcasted_iota` masks and `lax.fori_loop`; no dynamic slicing of values (only of refs),
no reshapes of values, no scratch buffers (the Triton lowering has none).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

F32 = jnp.float32
# |gate| is clamped here before the log (a gate of exactly 0 becomes 1e-30), by every kernel
# that keeps gates as log|g| plus a sign
GATE_FLOOR = 1e-30

# --------------------------------------------------------------------------------------------
# Backend selection


def resolve_interpret(interpret: bool | None) -> bool:
    """`interpret=None` means interpret mode exactly when the default backend is the CPU."""
    if interpret is None:
        return jax.default_backend() == "cpu"
    return bool(interpret)


def target_platform(interpret: bool, target: str | None = None) -> str:
    """The platform whose block-shape rules the wrappers follow: "gpu", "tpu" or "cpu"."""
    if target is not None:
        return target
    backend = jax.default_backend()
    if backend in ("gpu", "cuda", "rocm"):
        return "gpu"
    if backend == "tpu":
        return "tpu"
    return "cpu"


_TUNING: list[dict] = [{}]


@contextlib.contextmanager
def tuning(**overrides):
    """Overrides Triton compiler parameters (`num_stages`, `num_warps`) of every kernel traced
    inside the block; for tile sweeps (`experiments.bench.stages`), not for everyday use."""
    _TUNING.append({**_TUNING[-1], **overrides})
    try:
        yield
    finally:
        _TUNING.pop()


def compiler_params(platform: str, n_parallel: int, *, num_warps: int = 4, num_stages: int = 2):
    """Backend compiler parameters.

    On GPU, passing Triton's `CompilerParams` selects the Triton lowering of `pl.pallas_call`
    (see the module docstring of `pallas_kernels` for why). On TPU all grid axes of our kernels
    are independent ("parallel"): the sequential time/chunk loop lives inside the kernel.
    """
    if platform == "gpu":
        from jax.experimental.pallas import triton as pltriton

        t = _TUNING[-1]
        return pltriton.CompilerParams(num_warps=t.get("num_warps", num_warps),
                                       num_stages=t.get("num_stages", num_stages))
    if platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=("parallel",) * n_parallel)
    return None


# --------------------------------------------------------------------------------------------
# Block specs, recorded so that a test can check them against the TPU tiling rules.

_RECORD: list | None = None


def block_spec(array_shape, block_shape, index_map) -> pl.BlockSpec:
    """`pl.BlockSpec` that also records `(array_shape, block_shape)` while recording is on.

    `None` in `block_shape` is a squeezed dimension of size 1.
    """
    if _RECORD is not None:
        _RECORD.append((tuple(array_shape), tuple(block_shape)))
    return pl.BlockSpec(block_shape, index_map)


@contextlib.contextmanager
def record_block_shapes():
    """Collects every `(array_shape, block_shape)` built by `block_spec` inside the block."""
    global _RECORD
    previous, _RECORD = _RECORD, []
    try:
        yield _RECORD
    finally:
        _RECORD = previous


def tpu_block_ok(array_shape, block_shape) -> bool:
    """TPU rule: the last two block dims are multiples of (8, 128) or the full array extent."""
    blk = [1 if b is None else b for b in block_shape]
    if len(blk) < 2:
        return blk[-1] % 128 == 0 or blk[-1] == array_shape[-1]
    ok_sub = blk[-2] % 8 == 0 or blk[-2] == array_shape[-2]
    ok_lane = blk[-1] % 128 == 0 or blk[-1] == array_shape[-1]
    return ok_sub and ok_lane


def value_tile(dv: int, platform: str, preferred: int = 64) -> int:
    """Value-dim tile: full on TPU/CPU (lane rule); `preferred` on GPU when it divides dv."""
    if platform == "gpu" and dv > preferred and dv % preferred == 0:
        return preferred
    return dv


# Sequence arrays come in one of two layouts: "bhtd" `[B, H, Lp, d]` (TPU: the blocks' last two
# dims are then `[rows, d]`, legal) or "bthd" `[B, Lp, H, d]` (GPU: the caller's own layout, so
# no transposes around the kernels; a block `[rows, d]` is a strided load, which the Triton
# lowering handles).


def seq_dims(x, layout):
    """`(B, H, Lp, d)` of a sequence array."""
    if layout == "bthd":
        B, Lp, H, d = x.shape
        return B, H, Lp, d
    return x.shape


def seq_shape(B, H, Lp, d, layout, lead=()):
    return (*lead, B, Lp, H, d) if layout == "bthd" else (*lead, B, H, Lp, d)


def seq_spec(B, H, Lp, d, rows, cols, layout, imap, lead=()):
    """Block spec of a sequence array (with leading dims of sizes `lead`, squeezed): blocks
    of `[rows, cols]`; `imap(*grid)` gives the `(*lead indices, b, h, row block, col block)`
    of the head-major view."""
    lead_blk = (None,) * len(lead)
    if layout == "bthd":
        def bt_map(*g):
            *ld, b, h, r, c = imap(*g)
            return (*ld, b, r, h, c)

        return block_spec(seq_shape(B, H, Lp, d, layout, lead),
                             (*lead_blk, None, rows, None, cols), bt_map)
    return block_spec(seq_shape(B, H, Lp, d, layout, lead),
                         (*lead_blk, None, None, rows, cols), imap)


# --------------------------------------------------------------------------------------------
# In-kernel helpers (2-D only)


_DOT_PLATFORM = ["cpu"]


@contextlib.contextmanager
def dot_platform(platform: str):
    """Sets, while a kernel body is traced, which f32 dot algorithm `mm*` ask for."""
    _DOT_PLATFORM.append(platform)
    try:
        yield
    finally:
        _DOT_PLATFORM.pop()


def _prec(a):
    # bf16 operands: the native bf16 tensor-core path. f32 operands: the Triton lowering maps
    # Precision.DEFAULT to plain TF32 (~1e-3 relative error) and HIGHEST to IEEE FMA loops
    # (very slow to compile and run at 64 x 128 tiles), so on GPU we ask for 3xTF32 (f32-level
    # error on tensor cores); elsewhere (interpret mode, TPU) for HIGHEST.
    if a.dtype != F32:
        return lax.Precision.DEFAULT
    if _DOT_PLATFORM[-1] == "gpu":
        return lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    return lax.Precision.HIGHEST


def _dot(a, b, dims, dtype):
    if dtype is not None:
        a, b = a.astype(dtype), b.astype(dtype)
    return lax.dot_general(a, b, (dims, ((), ())), precision=_prec(a),
                           preferred_element_type=F32)


def mm(a, b, dtype=None):
    """`a @ b` with f32 accumulation; operands cast to `dtype` (the input dtype) first."""
    return _dot(a, b, ((1,), (0,)), dtype)


def mm_nt(a, b, dtype=None):
    """`a @ b.T` with f32 accumulation."""
    return _dot(a, b, ((1,), (1,)), dtype)


def mm_tn(a, b, dtype=None):
    """`a.T @ b` with f32 accumulation."""
    return _dot(a, b, ((0,), (0,)), dtype)


def iotas(n: int, m: int | None = None):
    """Row and column index grids `[n, m]`."""
    m = n if m is None else m
    return lax.broadcasted_iota(jnp.int32, (n, m), 0), lax.broadcasted_iota(jnp.int32, (n, m), 1)


def col_to_row(x):
    """`[n, 1] -> [1, n]` by a masked reduction (no value transposes needed)."""
    n = x.shape[0]
    r, c = iotas(n)
    return jnp.sum(jnp.where(r == c, x, 0.0), axis=0, keepdims=True)


def row_to_col(x):
    """`[1, n] -> [n, 1]` by a masked reduction."""
    n = x.shape[1]
    r, c = iotas(n)
    return jnp.sum(jnp.where(r == c, x, 0.0), axis=1, keepdims=True)


def unit_lower_inverse(a, a_t):
    """`(I + A)^{-1}` for strictly lower-triangular `A` `[C, C]` (f32), by forward substitution.

    Row i of `X = (I + A)^{-1}` is `e_i - sum_{j<i} A[i, j] X[j]`; rows are built in order with
    masked reductions (one row per loop step), which is exact forward substitution and so is
    stable for any A (beta in [0, 2], keys of any angle). `a_t` is `A^T`, passed in so that the
    kernel needs no transpose of values.
    """
    n = a.shape[0]
    r, c = iotas(n)
    x0 = jnp.where(r == c, 1.0, 0.0).astype(F32)

    def body(i, x):
        a_col = jnp.sum(jnp.where(c == i, a_t, 0.0), axis=1, keepdims=True)  # A[i, :] as [C, 1]
        new = jnp.sum(a_col * x, axis=0, keepdims=True)  # sum_j A[i, j] X[j, :]   [1, C]
        return x - jnp.where(r == i, new, 0.0)

    return lax.fori_loop(1, n, body, x0)


def unit_lower_inverse_blocked(a, blk: int = 16):
    """`(I + A)^{-1}` for strictly lower-triangular `A` `[C, C]` (f32), C a multiple of `blk`:
    block forward substitution built from `[C, C]` matmuls.

    1. The diagonal blocks, all at once: `blk` substitution steps, step j finishing row j of
       every block, `X <- X - mask_j(A_diag X)` (rows j of each block only read rows < j of
       that block, already final).
    2. Block rows i = 1 .. C / blk - 1 in order: `X_i <- D_i - D_ii sum_{k<i} A_ik X_k`
       (D = the block-diagonal inverse of step 1), as `X <- X - D (mask_i(A) X)`.
    The same algorithm as row-by-row substitution, reordered (so as stable for any A), but
    `blk + 2 (C / blk - 1)` matmuls replace C sequential masked reductions.
    """
    n = a.shape[0]
    r, c = iotas(n)
    eye = jnp.where(r == c, 1.0, 0.0).astype(F32)
    a_diag = jnp.where(r // blk == c // blk, a, 0.0)
    rmod = r % blk

    def diag_step(j, x):
        return x - jnp.where(rmod == j, mm(a_diag, x), 0.0)

    d = lax.fori_loop(1, blk, diag_step, eye)
    x = d
    for i in range(1, n // blk):  # static: a handful of block rows
        a_i = jnp.where((r // blk == i) & (c < i * blk), a, 0.0)
        x = x - mm(d, mm(a_i, x))
    return x


def pad_axis(x, axis: int, size: int, value=0.0):
    """Pads `x` along `axis` at the end to length `size`."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _manual_axis_type(x):
    """The `jax.shard_map` varying-axes type of `x` (None outside a shard_map)."""
    return getattr(jax.typeof(x), "manual_axis_type", None)


def _vary_alike(args, out_shape, interpret):
    """Inside `jax.shard_map` (with its default `check_vma=True`) `pl.pallas_call` needs to be
    told how its outputs vary over the manual mesh axes. A kernel's outputs depend on all of
    its inputs, so they vary over the union of the inputs' varying axes; inputs that vary over
    fewer (a replicated initial state) are cast to that union first. Outside a shard_map
    nothing varies and both are returned unchanged."""
    mats = [_manual_axis_type(a) for a in args]
    varying = frozenset().union(*(m.varying for m in mats if m is not None))
    if not varying:
        return args, out_shape
    if interpret:
        raise ValueError(
            "pallas kernels in interpret mode (CPU) cannot run inside jax.shard_map with "
            "check_vma=True: jax's Pallas interpreter loses the varying-axes types of its "
            f"loop carries (inputs vary over {sorted(varying)}). Pass check_vma=False to "
            "jax.shard_map or to lrnn.parallel.sequence_sharded, or use "
            "implementation='chunked' on CPU."
        )
    args = [a if m.varying == varying
            else lax.pcast(a, tuple(sorted(varying - m.varying)), to="varying")
            for a, m in zip(args, mats)]
    mat = _manual_axis_type(args[0])
    out_shape = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, manual_axis_type=mat), out_shape)
    return args, out_shape


def pallas_call(platform: str, kernel, **kwargs):
    """`pl.pallas_call(kernel, **kwargs)` whose body is traced under `dot_platform(platform)`.

    Works inside `jax.shard_map` (the sequence-parallel ops call the kernels per shard): the
    outputs are declared to vary like the inputs (see `_vary_alike`).
    """

    def run(*args):
        args, out_shape = _vary_alike(args, kwargs["out_shape"], kwargs.get("interpret", False))
        # interpret mode runs the body as CPU XLA ops: no GPU-only dot algorithms there
        with dot_platform("cpu" if kwargs.get("interpret", False) else platform):
            return pl.pallas_call(kernel, **{**kwargs, "out_shape": out_shape})(*args)

    return run


def causal_mm(a, v, dtype=None):
    """`a @ v` for a causal `a [L, L]` (zero above the diagonal, rows and columns the tokens
    of v's rows), with f32 accumulation, in which a non-finite `v[s, j]` reaches only the rows
    `t >= s` of column j, as in a token loop.

    A plain product spreads it up the column (`0 * NaN = NaN` above the diagonal): v is zeroed
    where non-finite before the product, and column j is set to NaN from its first non-finite
    row on after it (a min-reduction over the tile's rows: registers only, no pass over memory).
    Non-finite values of `a` are not touched (mask `a` with `where`, not by a product, so that
    they stay causal too).
    """
    ok = jnp.isfinite(v)
    r = lax.broadcasted_iota(jnp.int32, v.shape, 0)
    first = jnp.min(jnp.where(ok, v.shape[0], r), axis=0, keepdims=True)  # [1, cols]
    o = mm(a, jnp.where(ok, v, jnp.zeros_like(v)), dtype)
    return jnp.where(r >= first, jnp.nan, o)
