"""One call of each `pallas_kernels.gla_chunk` kernel at the benchmark shape, for `ncu`.

On the GPU machine, from the repo root:

    PYTHONPATH=$PWD ncu --kernel-name regex:lrnn_gla --section LaunchStats --section Occupancy \
        --section SpeedOfLight python3 -m experiments.bench.profile_gla [num_warps]

(registers per thread, spills, occupancy and duration of each kernel; benchmarks/RESULTS.md).
"""
import sys

import jax
import jax.numpy as jnp

from experiments.bench.kernels import _inputs
from pallas_kernels import gla_chunk as gc_

F32 = jnp.float32
B, T, H, D = 8, 2048, 16, 128
C = 64
nw = int(sys.argv[1]) if len(sys.argv) > 1 else 4
(q, k, v, g), do = _inputs("gla", B, T, H, D)
cfg = (C, D ** -0.5, False, "gpu", 64, nw, "bthd", D)
gi = g.astype(F32)
h0 = jnp.zeros((B, H, D, D), F32)
lgc, sgc, gcol = jax.jit(lambda g: gc_.prep_gates(g, cfg))(gi)
hs, ht = jax.jit(lambda *a: gc_._sweep(*a, cfg, reverse=False))(k, v, lgc, sgc, gcol, h0)
a = jax.jit(lambda *a: gc_._scores(*a, cfg))(q, k, lgc, sgc)
dhs, _ = jax.jit(lambda *a: gc_._sweep(*a, cfg, reverse=True))(q, do, lgc, sgc, gcol, h0)
da, dv, dqi, dki = jax.jit(lambda *a: gc_._dv(*a, cfg))(k, v, do, lgc, sgc, a, hs, dhs)
out = jax.jit(lambda *a: gc_._dqk(*a, cfg))(q, k, lgc, sgc, da, dqi, dki)
jax.block_until_ready(out)
print("ok")
