"""Pallas kernels behind `lrnn.ops.<op>(..., implementation="pallas")`.

One kernel source for GPU and TPU: `pl.pallas_call` with a grid and BlockSpecs, 2-D dots
(`lax.dot_general`, the general form of `jnp.dot`, for the transposed products) with
`preferred_element_type=jnp.float32`, loops with `lax.fori_loop`. On CPU the same
kernels run with `interpret=True` (the default there), which is how CI tests them.

- `linear_recurrence(a, b, h0=None)`: diagonal `h_t = a_t h_{t-1} + b_t`.
- `gated_linear_attention(q, k, v, gate, ...)`: gates per head or per key, signed.
- `delta_product(q, k, v, beta, gate=None, ...)`: n_h Householder steps per token (WY form);
  DeltaNet (n_h = 1) and Gated DeltaNet are special cases.
- `delta_recurrent(q, k, v, beta, ...)`: the same recurrence token by token in one fused
  kernel each way (fla's "fused recurrent"); `delta_product(recurrent=None)` uses it on a GPU
  for short sequences. GPU lowering only.
- `selective_scan(u, delta, A, Bm, Cm, h0=None, ...)`: Mamba's selective scan fused (the
  `[B, T, D, N]` gates never built, the states written once for the backward); GPU lowering
  only.
Each has a backward kernel behind `jax.custom_vjp`. GLA and DeltaProduct also have a
chunk-parallel organisation (`chunk_parallel`; `gla_chunk.py`, `delta_chunk.py`): only the
chunk-to-chunk state products stay sequential, as in fla. It is the default for 16-bit inputs
on GPU for both (about twice as fast there as the sequential-chunk kernels). Timings:
benchmarks/RESULTS.md.

GPU lowering. On jax 0.11 `pl.pallas_call` lowers to Triton (deprecated but present and the
default when `compiler_params` is Triton's `CompilerParams`) or to Mosaic GPU (selected by
Mosaic-GPU compiler params or the `jax_pallas_use_mosaic_gpu` flag). We pass Triton's
`CompilerParams` explicitly. Why: Mosaic GPU through `pl.pallas_call` is itself deprecated in
favour of `plgpu.kernel`, and fast code there needs warpgroup (wgmma) layouts, TMA and explicit
shared-memory pipelining, i.e. a second kernel source; that breaks "one source for GPU and
TPU". The Triton lowering compiles the same array program we run on TPU and in interpret
mode, picks tensor-core instructions (wgmma on Hopper) for `jnp.dot` itself and supports
`fori_loop` carries in registers. jax-triton would also mean a separate hand-written Triton
source. It compiled and ran all three kernels on an H100 (jax 0.11.2, Triton 3.6), but the
current kernels are still slower than fla (on an H200, bf16 fwd+bwd: DeltaNet 0.73-0.79x
fla's speed, GLA 0.64-0.66x; the diagonal recurrence at 62-70% of copy bandwidth): see
`benchmarks/RESULTS.md` for the numbers, what limits them (register spills in the Triton
programs) and what would close the gap. The Triton lowering warns that it is deprecated.

TPU. Block shapes keep the last two dims multiples of (8, 128) or the full extent
(`tests/test_pallas_blocks.py` checks every BlockSpec the wrappers build with
`_target="tpu"`); every grid axis is independent ("parallel"), the sequential time or chunk
loop lives inside the kernel.
"""

from pallas_kernels.delta_product import delta_product
from pallas_kernels.delta_recurrent import delta_recurrent
from pallas_kernels.gla import gated_linear_attention
from pallas_kernels.linear_recurrence import linear_recurrence
from pallas_kernels.selective_scan import selective_scan

__all__ = ["linear_recurrence", "gated_linear_attention", "delta_product", "delta_recurrent",
           "selective_scan"]
