"""Diagonal linear recurrence `h_t = a_t * h_{t-1} + b_t` as a Pallas kernel, with its backward.

Memory-bound: each program owns a tile of `BD` channels of one batch row and walks the time
axis with the f32 state in registers, reading `a_t, b_t` and writing `h_t` once. The backward
is the same walk in reverse time: `g_t = dh_t + a_{t+1} g_{t+1}`, `db_t = g_t`,
`da_t = g_t h_{t-1}`, `dh0 = a_1 g_1`.

Grid `(B, D / BD)`: both axes are parallel (independent programs); the time loop is inside.
On GPU the loop goes by tiles of `Tt` steps by default (`block_t`): one coalesced `[Tt, BD]`
load per tile instead of a `[1, BD]` load per step (2.4x faster on an H200), and each tile is
one log-depth scan of the affine maps `(a_t, b_t)` (`tile_scan`, `pallas_kernels._scan`: Triton's
`tt.scan`) instead of Tt dependent steps (another 2.2x: 62-70% of the copy bandwidth,
benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import _common as cm
from pallas_kernels._scan import AVAILABLE as _SCAN_AVAILABLE
from pallas_kernels._scan import linear_scan

F32 = jnp.float32


def _fwd_kernel(a_ref, b_ref, h0_ref, h_ref, *, T):
    # a_ref, b_ref, h_ref: [T, BD]; h0_ref: [1, BD] (f32)
    def body(t, h):
        row = pl.ds(t, 1)
        h = a_ref[row, :].astype(F32) * h + b_ref[row, :].astype(F32)
        h_ref[row, :] = h.astype(h_ref.dtype)
        return h

    lax.fori_loop(0, T, body, h0_ref[...].astype(F32))


def _bwd_kernel(a_ref, h_ref, h0_ref, dh_ref, da_ref, db_ref, dh0_ref, *, T):
    h0 = h0_ref[...].astype(F32)

    def body(i, carry):  # carry = a_{t+1} g_{t+1}
        t = T - 1 - i
        row = pl.ds(t, 1)
        g = dh_ref[row, :].astype(F32) + carry
        db_ref[row, :] = g.astype(db_ref.dtype)
        prev = h_ref[pl.ds(jnp.maximum(t - 1, 0), 1), :].astype(F32)
        prev = jnp.where(t == 0, h0, prev)
        da_ref[row, :] = (g * prev).astype(da_ref.dtype)
        return a_ref[row, :].astype(F32) * g

    dh0_ref[...] = lax.fori_loop(0, T, body, jnp.zeros_like(h0))


def _row(x, r, j):
    """Row j (static) of a `[Tt, BD]` tile as `[1, BD]`, by a masked reduction."""
    return jnp.sum(jnp.where(r == j, x, 0.0), axis=0, keepdims=True)


def _fwd_kernel_tiled(a_ref, b_ref, h0_ref, h_ref, *, T, Tt):
    # Loads [Tt, BD] tiles (coalesced, Tt rows in flight) and runs their Tt steps in registers.
    r = lax.broadcasted_iota(jnp.int32, (Tt, a_ref.shape[-1]), 0)

    def tile(i, h):
        sl = pl.ds(i * Tt, Tt)
        a, b = a_ref[sl, :].astype(F32), b_ref[sl, :].astype(F32)
        out = jnp.zeros(a.shape, F32)
        for j in range(Tt):
            h = _row(a, r, j) * h + _row(b, r, j)
            out = jnp.where(r == j, h, out)
        h_ref[sl, :] = out.astype(h_ref.dtype)
        return h

    lax.fori_loop(0, T // Tt, tile, h0_ref[...].astype(F32))


def _bwd_kernel_tiled(a_ref, h_ref, h0_ref, dh_ref, da_ref, db_ref, dh0_ref, *, T, Tt):
    # tiles in reverse, each row by row in registers (`_bwd_tile_rows`)
    nt, rows = _bound_rows(a_ref, h_ref, h0_ref, dh_ref, da_ref, db_ref, T, Tt)
    zero = jnp.zeros(h0_ref.shape, F32)
    dh0_ref[...] = lax.fori_loop(0, nt, lambda ii, c: rows(nt - 1 - ii, c[0]), (zero, zero))[1]


def _fwd_kernel_scan(a_ref, b_ref, h0_ref, h_ref, *, T, Tt):
    # [Tt, BD] tiles; inside a tile, the log-depth scan of the affine maps (a_t, b_t) gives
    # h_t = A_t h_in + B_t for all Tt rows at once (pallas_kernels._scan)
    r = lax.broadcasted_iota(jnp.int32, (Tt, a_ref.shape[-1]), 0)

    def tile(i, h):
        sl = pl.ds(i * Tt, Tt)
        A, Bc = linear_scan(a_ref[sl, :].astype(F32), b_ref[sl, :].astype(F32))
        out = A * h + Bc
        h_ref[sl, :] = out.astype(h_ref.dtype)
        return _row(out, r, Tt - 1)

    lax.fori_loop(0, T // Tt, tile, h0_ref[...].astype(F32))


def _bwd_tile_rows(i, g_next, a_ref, h_ref, h0_ref, dh_ref, da_ref, db_ref, r, T, Tt):
    """One tile of the backward row by row (every tile of `_bwd_kernel_tiled`; the first and
    last tiles of `_bwd_kernel_scan`, whose neighbour rows fall outside the sequence).
    `g_next`: g of the row after the tile (0 after the end). Returns `(g, a g)` of the tile's
    first row."""
    sl = pl.ds(i * Tt, Tt)
    a, h, dh = (ref[sl, :].astype(F32) for ref in (a_ref, h_ref, dh_ref))
    a_after = a_ref[pl.ds(jnp.minimum(i * Tt + Tt, T - 1), 1), :].astype(F32)
    carry = a_after * g_next  # a_{t+1} g_{t+1} for the tile's last row (g_next = 0 at the end)
    before = h_ref[pl.ds(jnp.maximum(i * Tt - 1, 0), 1), :].astype(F32)
    before = jnp.where(i == 0, h0_ref[...].astype(F32), before)
    da = jnp.zeros(a.shape, F32)
    db = jnp.zeros(a.shape, F32)
    g = g_next
    for j in range(Tt - 1, -1, -1):
        g = _row(dh, r, j) + carry
        prev = _row(h, r, j - 1) if j > 0 else before
        db = jnp.where(r == j, g, db)
        da = jnp.where(r == j, g * prev, da)
        carry = _row(a, r, j) * g
    da_ref[sl, :] = da.astype(da_ref.dtype)
    db_ref[sl, :] = db.astype(db_ref.dtype)
    return g, carry


def _bound_rows(a_ref, h_ref, h0_ref, dh_ref, da_ref, db_ref, T, Tt):
    """`(number of tiles, rows)` for a backward kernel's refs: `rows(i, g_next)` runs tile i
    row by row (`_bwd_tile_rows`)."""
    r = lax.broadcasted_iota(jnp.int32, (Tt, a_ref.shape[-1]), 0)
    return T // Tt, functools.partial(_bwd_tile_rows, a_ref=a_ref, h_ref=h_ref, h0_ref=h0_ref,
                                      dh_ref=dh_ref, da_ref=da_ref, db_ref=db_ref, r=r, T=T,
                                      Tt=Tt)


def _bwd_kernel_scan(a_ref, h_ref, h0_ref, dh_ref, da_ref, db_ref, dh0_ref, *, T, Tt):
    # g_t = dh_t + a_{t+1} g_{t+1}: inside a tile, the reverse scan of the maps (a_{t+1}, dh_t)
    # (a loaded one row ahead) gives g_t = C_t g_next + D_t; da_t = g_t h_{t-1} (h loaded one
    # row behind). The last and first tiles, whose shifted rows fall outside, go row by row.
    r = lax.broadcasted_iota(jnp.int32, (Tt, a_ref.shape[-1]), 0)
    nt, rows = _bound_rows(a_ref, h_ref, h0_ref, dh_ref, da_ref, db_ref, T, Tt)
    g_next = jnp.zeros(h0_ref.shape, F32)
    if nt == 1:
        dh0_ref[...] = rows(0, g_next)[1]
        return
    g_next, _ = rows(nt - 1, g_next)

    def tile(ii, g_next):
        start = (nt - 2 - ii) * Tt
        sl = pl.ds(start, Tt)
        C, Dc = linear_scan(a_ref[pl.ds(start + 1, Tt), :].astype(F32),
                            dh_ref[sl, :].astype(F32), reverse=True)
        g = C * g_next + Dc
        db_ref[sl, :] = g.astype(db_ref.dtype)
        da_ref[sl, :] = (g * h_ref[pl.ds(start - 1, Tt), :].astype(F32)).astype(da_ref.dtype)
        return _row(g, r, 0)

    g_next = lax.fori_loop(0, nt - 2, tile, g_next)
    dh0_ref[...] = rows(0, g_next)[1]


def _tiles(D: int, platform: str, block_d: int | None):
    if block_d is None:
        block_d = 128 if platform == "gpu" else (512 if D % 512 == 0 else D)
    if platform == "tpu" and not (block_d % 128 == 0 or block_d >= D):
        raise ValueError(f"block_d={block_d} is not TPU-legal for D={D}")
    block_d = min(block_d, D) if platform != "gpu" else block_d
    Dp = cm.round_up(D, block_d)
    return block_d, Dp


def _call_fwd(a, b, h0, interpret, platform, block_d, num_warps, block_t, scan=False):
    B, T0, D = a.shape
    T = T0 if block_t is None else cm.round_up(T0, block_t)
    bd, Dp = _tiles(D, platform, block_d)
    a_p, b_p = (cm.pad_axis(cm.pad_axis(x, 1, T), 2, Dp) for x in (a, b))
    h0_p = cm.pad_axis(h0, 1, Dp)[:, None, :]  # [B, 1, Dp]
    seq = lambda shape: cm.block_spec(shape, (None, T, bd), lambda i, j: (i, 0, j))
    st = lambda shape: cm.block_spec(shape, (None, 1, bd), lambda i, j: (i, 0, j))
    kernel = (functools.partial(_fwd_kernel, T=T) if block_t is None
              else functools.partial(_fwd_kernel_scan if scan else _fwd_kernel_tiled, T=T,
                                     Tt=block_t))
    h = pl.pallas_call(
        kernel,
        grid=(B, Dp // bd),  # both parallel
        in_specs=[seq(a_p.shape), seq(b_p.shape), st(h0_p.shape)],
        out_specs=seq((B, T, Dp)),
        out_shape=jax.ShapeDtypeStruct((B, T, Dp), b.dtype),
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 2, num_warps=num_warps, num_stages=4),
        name="lrnn_linear_recurrence_fwd",
    )(a_p, b_p, h0_p)
    return h[:, :T0, :D]


def _call_bwd(a, h, h0, dh, interpret, platform, block_d, num_warps, block_t, scan=False):
    B, T0, D = a.shape
    T = T0 if block_t is None else cm.round_up(T0, block_t)
    bd, Dp = _tiles(D, platform, block_d)
    a_p, h_p, dh_p = (cm.pad_axis(cm.pad_axis(x, 1, T), 2, Dp) for x in (a, h, dh))
    h0_p = cm.pad_axis(h0, 1, Dp)[:, None, :]
    seq = lambda shape: cm.block_spec(shape, (None, T, bd), lambda i, j: (i, 0, j))
    st = lambda shape: cm.block_spec(shape, (None, 1, bd), lambda i, j: (i, 0, j))
    kernel = (functools.partial(_bwd_kernel, T=T) if block_t is None
              else functools.partial(_bwd_kernel_scan if scan else _bwd_kernel_tiled, T=T,
                                     Tt=block_t))
    da, db, dh0 = pl.pallas_call(
        kernel,
        grid=(B, Dp // bd),  # both parallel
        in_specs=[seq(a_p.shape), seq(h_p.shape), st(h0_p.shape), seq(dh_p.shape)],
        out_specs=[seq((B, T, Dp)), seq((B, T, Dp)), st((B, 1, Dp))],
        out_shape=[
            jax.ShapeDtypeStruct((B, T, Dp), a.dtype),
            jax.ShapeDtypeStruct((B, T, Dp), a.dtype),
            jax.ShapeDtypeStruct((B, 1, Dp), F32),
        ],
        interpret=interpret,
        compiler_params=cm.compiler_params(platform, 2, num_warps=num_warps, num_stages=4),
        name="lrnn_linear_recurrence_bwd",
    )(a_p, h_p, h0_p, dh_p)
    return da[:, :T0, :D], db[:, :T0, :D], dh0[:, 0, :D]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _lr(a, b, h0, interpret, platform, block_d, num_warps, block_t, scan):
    return _call_fwd(a, b, h0, interpret, platform, block_d, num_warps, block_t[0], scan)


def _lr_fwd(a, b, h0, interpret, platform, block_d, num_warps, block_t, scan):
    h = _call_fwd(a, b, h0, interpret, platform, block_d, num_warps, block_t[0], scan)
    return h, (a, h, h0)


def _lr_bwd(interpret, platform, block_d, num_warps, block_t, scan, res, dh):
    a, h, h0 = res
    da, db, dh0 = _call_bwd(a, h, h0, dh, interpret, platform, block_d, num_warps, block_t[1],
                            scan)
    return da.astype(a.dtype), db.astype(h.dtype), dh0.astype(h0.dtype)


_lr.defvjp(_lr_fwd, _lr_bwd)


def linear_recurrence(a, b, h0=None, *, interpret=None, block_d=None, num_warps=None,
                      block_t="auto", tile_scan=None, block_t_bwd=None, _target=None):
    """Diagonal linear recurrence `h_t = a_t * h_{t-1} + b_t` (Pallas).

    Args:
      a: `[B, T, D]` decay (any sign).
      b: `[B, T, D]` input.
      h0: `[B, D]` initial state or None (zeros).
      interpret: run the kernel in interpret mode; None means "on CPU".
      block_d: channels per program (a tuning knob; GPU default 32 scanned tiles, 64 stepped
        tiles, 128 one-row).
      num_warps: Triton warps per program (GPU only; default 2 tiled, 1 one-row).
      block_t: None (one `[1, BD]` row per step) or a tile length Tt (a multiple of 8): load
        `[Tt, BD]` tiles (one coalesced load) and run their steps in registers. "auto"
        (default): on GPU 128 with `tile_scan` (H200, (8, 4096, 2048) f32: 0.39-0.43 ms,
        against 0.93 ms for tiles of 32 stepped row by row and 2.1 ms one row per step;
        benchmarks/RESULTS.md), else 32; None elsewhere.
      tile_scan: with `block_t`, run each tile's steps as one log-depth scan of the affine maps
        (`pallas_kernels._scan`, Triton's `tt.scan`) instead of Tt dependent steps. None
        (default): on for the GPU when this jax's Triton lowering accepts it.
      block_t_bwd: the backward's tile length (default: 32 with the GPU's "auto" tiles, else
        block_t). Its first and last tiles go row by row, so it prefers short tiles.

    Returns:
      h: `[B, T, D]` in b's dtype; the state is carried in f32.
    """
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"a and b must both be [B, T, D]; got a {a.shape}, b {b.shape}")
    B, T, D = a.shape
    if h0 is None:
        h0 = jnp.zeros((B, D), F32)
    if h0.shape != (B, D):
        raise ValueError(f"h0 must be [B, D] = {(B, D)}; got {h0.shape}")
    interpret = cm.resolve_interpret(interpret)
    platform = cm.target_platform(interpret, _target)
    if tile_scan is None:
        tile_scan = platform == "gpu" and _SCAN_AVAILABLE and not interpret
    if isinstance(block_t, str):
        if block_t != "auto":
            raise ValueError(f"block_t must be None, 'auto' or an int; got {block_t!r}")
        # GPU (H200, (8, 4096, 2048) f32, `experiments.bench.kernels diag`): scanned tiles of
        # 128 steps x 32 channels, 2 warps; the backward's row-by-row end tiles want 32 steps
        block_t = (128 if tile_scan else 32) if platform == "gpu" else None
        if block_t_bwd is None and tile_scan and platform == "gpu":
            block_t_bwd = 32
    if num_warps is None:
        num_warps = 1 if block_t is None else 2
    if block_d is None and platform == "gpu" and block_t is not None:
        block_d = 32 if tile_scan else 64
    if block_t_bwd is None:
        block_t_bwd = block_t
    for name, bt in (("block_t", block_t), ("block_t_bwd", block_t_bwd)):
        if bt is not None and (bt < 1 or bt % 8):
            raise ValueError(f"{name} must be a positive multiple of 8; got {bt}")
    if (block_t is None) != (block_t_bwd is None):
        raise ValueError("block_t and block_t_bwd must both be tile lengths or both None")
    if tile_scan and block_t is None:
        raise ValueError("tile_scan needs block_t (a tile length)")
    if tile_scan and platform == "tpu":
        raise ValueError("tile_scan has a Triton (GPU) lowering only; pass tile_scan=False")
    return _lr(a, b, h0, interpret, platform, block_d, num_warps, (block_t, block_t_bwd),
               bool(tile_scan))
