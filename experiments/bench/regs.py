"""Registers and spills of our GPU kernels, without a GPU.

Lowers one op's fwd+bwd for CUDA on this machine (the Pallas Triton lowering needs no device),
keeps the Triton IR of every kernel, compiles each with the `triton` package's CUDA backend and
`ptxas -v` for sm_90, and prints registers per thread, spill bytes and shared memory:

    pip install triton            # any machine; not a dependency of lrnn
    python -m experiments.bench.regs --op delta        # gla, delta, gated (Gated DeltaNet)

On the GPU machine XLA compiles the same IR with its own bundled Triton, whose register counts
can differ (`ncu`, experiments/bench/profile_gla.py, measures those); this is the quick look,
e.g. which kernel spills, before spending device time.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import jax
import jax.numpy as jnp

SHAPE = (8, 2048, 16, 128)


def capture_ttir(op: str, shape=SHAPE) -> dict[str, tuple[str, int, int]]:
    """{kernel name: (TTIR text, num_warps, num_stages)} of `op`'s fwd+bwd (bf16, the GPU
    defaults), lowered for CUDA."""
    from jax._src.pallas import core as pallas_core
    from jax._src.pallas.triton import core as triton_core
    from jax._src.pallas.triton import pallas_call_registration as registration

    import pallas_kernels as pk

    B, T, H, D = shape
    mods: dict[str, tuple[str, int, int]] = {}
    params = []
    lower = registration.lowering.lower_jaxpr_to_triton_module
    rules = pallas_core._backend_lowering_rules
    rule, platform = rules[triton_core.CompilerParams]

    def keep(*args, **kwargs):
        res = lower(*args, **kwargs)
        text = res.module.operation.get_asm(enable_debug_info=False)
        mods[re.search(r"module @(\w+)", text).group(1)] = (text, *params[-1])
        return res

    def rule_keeping_params(ctx, *nodes, compiler_params, **kw):
        params.append((compiler_params.num_warps or 4,
                       3 if compiler_params.num_stages is None else compiler_params.num_stages))
        return rule(ctx, *nodes, compiler_params=compiler_params, **kw)

    bf = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)
    if op == "gla":
        def loss(q, k, v, g):
            o, _ = pk.gated_linear_attention(q, k, v, g, scale=D ** -0.5, interpret=False,
                                             _target="gpu")
            return jnp.sum(o.astype(jnp.float32))

        args = (bf(B, T, H, D),) * 4
    elif op in ("delta", "gated"):
        def loss(q, k, v, b, g):
            o, _ = pk.delta_product(q, k, v, b, gate=g if op == "gated" else None,
                                    scale=D ** -0.5, interpret=False, _target="gpu")
            return jnp.sum(o.astype(jnp.float32))

        args = (bf(B, T, H, D), bf(B, T, H, 1, D), bf(B, T, H, 1, D), bf(B, T, H, 1),
                bf(B, T, H))
    else:
        raise ValueError(f"op must be gla, delta or gated; got {op!r}")
    registration.lowering.lower_jaxpr_to_triton_module = keep
    rules[triton_core.CompilerParams] = (rule_keeping_params, platform)
    try:
        grad = jax.grad(loss, tuple(range(len(args))))
        jax.jit(grad).trace(*args).lower(lowering_platforms=("cuda",))
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower
        rules[triton_core.CompilerParams] = (rule, platform)
    return mods


def compile_report(text: str, capability: int = 90, num_warps: int = 4,
                   num_stages: int = 3) -> dict:
    """TTIR text -> {registers, spill_bytes, shared} via triton's CUDA backend and ptxas -v."""
    import triton
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    backend = CUDABackend(GPUTarget("cuda", capability, 32))
    opts = backend.parse_options({"num_warps": num_warps, "num_ctas": 1,
                                  "num_stages": num_stages})
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ttir")
        with open(path, "w") as fh:
            fh.write(text)
        mod = ir.parse_mlir_module(path, ctx)
        mod.context = ctx
        md: dict = {}
        mod = backend.make_ttir(mod, md, opts, capability)
        mod = backend.make_ttgir(mod, md, opts, capability)
        ptx = backend.make_ptx(backend.make_llir(mod, md, opts, capability), md, opts,
                               capability)
        with open(os.path.join(tmp, "k.ptx"), "w") as fh:
            fh.write(ptx)
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
        out = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{capability}a",
                              os.path.join(tmp, "k.ptx"), "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spill = int(re.search(r"(\d+) bytes spill stores", log).group(1))
    return dict(registers=regs, spill_bytes=spill, shared=int(md["shared"]))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.bench.regs")
    ap.add_argument("--op", default="gla", choices=["gla", "delta", "gated"])
    a = ap.parse_args(argv)
    mods = capture_ttir(a.op)
    print(f"{a.op} fwd+bwd at {SHAPE}, bf16, the GPU defaults; triton's CUDA backend, sm_90\n")
    print("| kernel | warps | stages | registers | spill bytes | shared bytes |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, (text, nw, ns) in mods.items():
        r = compile_report(text, num_warps=nw, num_stages=ns)
        print(f"| {name} | {nw} | {ns} | {r['registers']} | {r['spill_bytes']} | "
              f"{r['shared']} |")


if __name__ == "__main__":
    main()
