"""Compiled Pallas kernels on a GPU (marker `gpu`; run on the GPU machine).

    JAX_PLATFORMS=cuda PYTHONPATH=$PWD python3 -m pytest tests/test_pallas_gpu.py -m gpu -q

Larger sizes than the interpret-mode tests, f32 against float64 references (forward and every
input gradient), bf16 against the same references, and DeltaNet / GLA outputs and gradients
against fla 0.6.0 on identical bf16 inputs (fla runs in a subprocess:
`python3 -m experiments.bench.kernels fla-worker`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_pallas_kernels import (
    jax_delta_product,
    jax_gla,
    jax_linear_recurrence,
    rel,
    signed_gates,
)

import pallas_kernels as pk

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (compiled kernels)"),
]
F32 = jnp.float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _grads(f, args, w_o, w_s, dtype):
    def loss(*xs):
        o, S = f(*xs)
        return (jnp.sum(o.astype(dtype) * w_o.astype(dtype))
                + jnp.sum(S.astype(dtype) * w_s.astype(dtype))), (o, S)

    (_, out), g = jax.jit(jax.value_and_grad(loss, range(len(args)), has_aux=True))(*args)
    return out, g


def _check(f_pk, f_ref, args, names, dtype, tol, gate_tol):
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        a64 = [jnp.asarray(x, jnp.float64) for x in args]
        o_shape = jax.eval_shape(f_ref, *a64)
    w_o, w_s = rng.normal(size=o_shape[0].shape), rng.normal(size=o_shape[1].shape)
    ax = [jnp.asarray(x, dtype) for x in args]
    (o, S), g = _grads(f_pk, ax, w_o, w_s, F32)
    with jax.enable_x64(True):
        a64 = [jnp.asarray(np.asarray(x.astype(F32)), jnp.float64) for x in ax]  # same values
        (o2, S2), g2 = _grads(f_ref, a64, w_o, w_s, jnp.float64)
    assert rel(o, o2) < tol and rel(S, S2) < tol, (rel(o, o2), rel(S, S2))
    for n, a, b in zip(names, g, g2):
        t = gate_tol if n == "gate" else tol
        assert rel(a.astype(F32), b) < t, (n, rel(a.astype(F32), b))


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_linear_recurrence_gpu(dtype, tol):
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (4, 1000, 1000))
    b, h0 = rng.normal(size=(4, 1000, 1000)), rng.normal(size=(4, 1000))
    names = ["a", "b", "h0"]

    def f_pk(a, b, h0):
        return pk.linear_recurrence(a, b, h0), h0

    def f_ref(a, b, h0):
        return jax_linear_recurrence(a, b, h0), h0

    _check(f_pk, f_ref, [a, b, h0], names, dtype, tol, tol)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_selective_scan_gpu(dtype, tol, signed):
    # the paper preset's mixer width (D 256, N 16), T = 300 (not a power of two), an h0
    from lrnn import ops
    from lrnn.numerics import random_inputs

    x = random_inputs("selective_scan", batch=4, length=300, dk=256, dv=16, seed=1)
    names = ["u", "delta", "A", "Bm", "Cm", "h0"]
    f = lambda impl: lambda *xs: (lambda y: (y, y[:, -1]))(
        ops.selective_scan(*xs, signed=signed, implementation=impl))
    _check(f("pallas"), f("sequential"), [x[n] for n in names], names, dtype, tol, tol)


@pytest.mark.parametrize("n_h, gated, dtype, tol, pre", [
    (1, False, jnp.float32, 2e-5, False), (2, True, jnp.float32, 2e-5, False),
    (1, True, jnp.bfloat16, 3e-2, False), (3, False, jnp.bfloat16, 3e-2, False),
    (2, True, jnp.bfloat16, 3e-2, True),
    # pallas_kernels.delta_chunk (opt-in chunk_parallel=True)
    (1, False, jnp.bfloat16, 3e-2, "chunk"), (2, True, jnp.bfloat16, 3e-2, "chunk"),
    (1, True, jnp.float32, 2e-5, "chunk"),
    # pallas_kernels.delta_recurrent (token by token; recurrent=True)
    (1, False, jnp.float32, 2e-5, "recurrent"), (2, True, jnp.float32, 2e-5, "recurrent"),
    (1, True, jnp.bfloat16, 3e-2, "recurrent"), (3, False, jnp.bfloat16, 3e-2, "recurrent")])
def test_delta_product_gpu(n_h, gated, dtype, tol, pre):
    rng = np.random.default_rng(n_h)
    B, T, H, dk, dv, scale = 2, 333, 2, 128, 128, 128**-0.5
    k = rng.normal(size=(B, T, H, n_h, dk))
    x = dict(q=rng.normal(size=(B, T, H, dk)), k=k / np.linalg.norm(k, axis=-1, keepdims=True),
             v=rng.normal(size=(B, T, H, n_h, dv)), beta=rng.uniform(0, 2, (B, T, H, n_h)),
             gate=signed_gates(rng, (B, T, H)), h0=rng.normal(size=(B, H, dk, dv)))
    names = ["q", "k", "v", "beta", "gate", "h0"] if gated else ["q", "k", "v", "beta", "h0"]

    def split(xs):
        d = dict(zip(names, xs))
        return d["q"], d["k"], d["v"], d["beta"], d.get("gate"), d["h0"]

    def f_pk(*xs):
        q, k, v, b, g, h0 = split(xs)
        if pre in ("chunk", "recurrent"):
            return pk.delta_product(q, k, v, b, gate=g, initial_state=h0, scale=scale,
                                    chunk_parallel=pre == "chunk", recurrent=pre == "recurrent")
        return pk.delta_product(q, k, v, b, gate=g, initial_state=h0, scale=scale,
                                precompute_inverse=pre, recurrent=False)

    def f_ref(*xs):
        return jax_delta_product(*split(xs), scale)

    _check(f_pk, f_ref, [x[n] for n in names], names, dtype, tol, 10 * tol)


@pytest.mark.parametrize("per_key, dtype, tol, split", [
    (True, jnp.float32, 2e-5, False), (False, jnp.bfloat16, 3e-2, False),
    (True, jnp.bfloat16, 3e-2, True),
    # pallas_kernels.gla_chunk (the default for bf16 on GPU)
    (True, jnp.bfloat16, 3e-2, "chunk"), (True, jnp.float32, 2e-5, "chunk")])
def test_gla_gpu(per_key, dtype, tol, split):
    rng = np.random.default_rng(3)
    B, T, H, dk, dv, scale = 2, 333, 2, 128, 128, 128**-0.5
    args = [rng.normal(size=(B, T, H, dk)), rng.normal(size=(B, T, H, dk)),
            rng.normal(size=(B, T, H, dv)),
            signed_gates(rng, (B, T, H, dk) if per_key else (B, T, H)),
            rng.normal(size=(B, H, dk, dv))]
    names = ["q", "k", "v", "gate", "h0"]

    def f_pk(q, k, v, g, h0):
        if split == "chunk":
            return pk.gated_linear_attention(q, k, v, g, initial_state=h0, scale=scale,
                                             chunk_parallel=True)
        return pk.gated_linear_attention(q, k, v, g, initial_state=h0, scale=scale,
                                         split_intra=split, chunk_parallel=False)

    def f_ref(q, k, v, g, h0):
        return jax_gla(q, k, v, g, h0, scale)

    _check(f_pk, f_ref, args, names, dtype, tol, 10 * tol)


def _run_fla(tmp_path, op, inputs):
    pin, pout = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(pin, op=op, **inputs)
    env = dict(os.environ, TRITON_CACHE_DIR="/tmp/triton", HOME="/tmp/home",
               PYTHONPATH=os.pathsep.join([os.environ.get("PYTHONPATH", ""), ROOT]))
    r = subprocess.run([sys.executable, "-m", "experiments.bench.kernels", "fla-worker",
                        str(pin), str(pout)], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    if r.returncode != 0:
        pytest.fail("fla worker failed:\n" + r.stderr[-4000:])
    return dict(np.load(pout))


def _bf16_values(rng, shape, kind="normal"):
    x = rng.normal(size=shape) if kind == "normal" else rng.uniform(0, 1, shape)
    return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(F32))


@pytest.mark.parametrize("op", ["deltanet", "gla"])
def test_against_fla(tmp_path, op):
    """Same bf16 inputs into fla and into our kernels; outputs and gradients agree to bf16."""
    rng = np.random.default_rng(11)
    B, T, H, D, scale = 2, 500, 4, 128, 128**-0.5
    q = _bf16_values(rng, (B, T, H, D))
    k = rng.normal(size=(B, T, H, D))
    k = np.asarray(jnp.asarray(k / np.linalg.norm(k, axis=-1, keepdims=True), jnp.bfloat16)
                   .astype(F32))
    v = _bf16_values(rng, (B, T, H, D))
    do = _bf16_values(rng, (B, T, H, D))
    if op == "deltanet":
        x = _bf16_values(rng, (B, T, H), "uniform")  # beta
    else:
        x = np.log(1 / (1 + np.exp(-(rng.normal(size=(B, T, H, D)) + 2.0)))).astype(np.float32)
    ref = _run_fla(tmp_path, op, dict(q=q, k=k, v=v, x=x, do=do, scale=scale))
    bf = lambda a: jnp.asarray(a, jnp.bfloat16)

    if op == "deltanet":
        def f(q, k, v, x):
            return pk.delta_product(q, k[:, :, :, None], v[:, :, :, None], x[..., None],
                                    scale=scale)[0]
        args = (bf(q), bf(k), bf(v), bf(x))
    else:
        def f(q, k, v, x):
            return pk.gated_linear_attention(q, k, v, jnp.exp(x), scale=scale)[0]
        args = (bf(q), bf(k), bf(v), jnp.asarray(x, F32))
    o, vjp = jax.vjp(f, *args)
    # gla: f takes the log gate x (through exp), so dx is d/d(log g) like fla's dg
    dq, dk, dv, dx = vjp(bf(do).astype(o.dtype))
    got = dict(o=o, dq=dq, dk=dk, dv=dv, dx=dx)
    errs = {n: rel(np.asarray(got[n].astype(F32)), ref[n]) for n in got}
    print(op, "rel err vs fla:", errs)
    for n, e in errs.items():
        assert e < 3e-2, (n, errs)
