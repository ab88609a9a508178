"""Non-finite inputs stay causal in DeltaNet / gated DeltaNet / DeltaProduct (issue #21 item 9).

A NaN or inf at token t in q, k, v, beta or the gate must leave every output before t as it is
on clean inputs, in every implementation (the chunked forms and kernels used to spread it
through the chunk's triangular products, `0 * NaN = NaN`; the XLA chunked form and the
token-by-token kernel no longer do, the chunk kernels still do: `CHUNK_KERNEL_XFAIL`). From
t on, the sequential loop is the specification: an output it makes non-finite must stay
non-finite (a sanitised value must never come back silently finite), and one it keeps finite
must equal the clean output (a bad v[t, c] poisons value column c only; a bad q[t] only token
t; a bad k, beta or gate every column of its head). The same holds for the final state.

One call per (op, implementation) covers every case: each batch row carries one bad value
(which input, nan or inf, which token), so every row is an independent problem; the tests
read their rows from the cached outputs. Lengths are not multiples of the chunk, the bad
tokens sit inside a chunk (one in the middle, one in the padded last chunk), with an initial
state, signed gates, two heads (the bad value in head 1 only) and n_h = 2 for DeltaProduct.
`TestCompiledGPU` runs the same check on the compiled kernels (marker `gpu`):

    JAX_PLATFORMS=cuda python3 -m pytest -m gpu tests/test_nonfinite_delta.py
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from lrnn import ops
from lrnn.numerics import random_inputs

# op -> (n_h, gated)
OPS = {"delta_rule": (1, False), "gated_delta_rule": (1, True), "delta_product": (2, True)}
# dk, dv not powers of two: delta_recurrent pads them (and its value tiles) with zeros
T, C, H, DK, DV = 21, 8, 2, 6, 6
# bad tokens: inside a chunk of C = 8 tokens (and of C sub-steps for the kernels, also with
# n_h = 2), the second in the last, padded chunk; the sub-step of DeltaProduct that is bad
BAD_T = {10: 0, 20: 1}
BAD_HEAD, BAD_COL = 1, 3  # v: one value column; q, k: one key entry
BADS = ("q", "k", "v", "beta", "gate")
VALUES = {"nan": np.nan, "inf": np.inf}
SCALE = 0.5


def _cases(gated, bad_t):
    bads = BADS if gated else BADS[:-1]
    return [(b, v, t) for b in bads for v in VALUES for t in bad_t]


def _inputs(op, T=T, dk=DK, dv=DV, bad_t=BAD_T, seed=0):
    """Clean float32 inputs (DeltaProduct layout, ``k [B, T, H, n_h, dk]``) with one batch row
    per case, and the same inputs with each row's bad value in place."""
    n_h, gated = OPS[op]
    cases = _cases(gated, bad_t)
    x = random_inputs("delta_product", batch=len(cases), length=T, heads=H, dk=dk, dv=dv,
                      n_h=n_h, gate="head" if gated else "none", gate_low=0.3, negative=0.3,
                      seed=seed)
    x = {n: np.asarray(a, np.float32) for n, a in x.items()}
    bad = {n: a.copy() for n, a in x.items()}
    for row, (name, value, t) in enumerate(cases):
        j = bad_t[t] % n_h
        idx = {"q": (row, t, BAD_HEAD, BAD_COL), "k": (row, t, BAD_HEAD, j, BAD_COL),
               "v": (row, t, BAD_HEAD, j, BAD_COL), "beta": (row, t, BAD_HEAD, j),
               "gate": (row, t, BAD_HEAD)}[name]
        bad[name][idx] = VALUES[value]
    return x, bad, cases


def _op_call(op, impl, chunk_size=C, **kw):
    """lrnn.ops.<op>(implementation=impl) on DeltaProduct-layout inputs."""
    n_h, _ = OPS[op]

    def f(x):
        args = (x["q"], x["k"], x["v"], x["beta"])
        if n_h == 1:
            args = (x["q"], x["k"][:, :, :, 0], x["v"][:, :, :, 0], x["beta"][..., 0])
        fn = ops.delta_product if n_h > 1 else ops.delta_rule
        return fn(*args, gate=x.get("gate"), initial_state=x["initial_state"], scale=SCALE,
                  chunk_size=chunk_size, implementation=impl, **kw)

    return f


def _kernel_call(**kw):
    """pallas_kernels.delta_product (interpret mode on CPU) with organisation flags ``kw``."""

    def f(x):
        return pk.delta_product(x["q"], x["k"], x["v"], x["beta"], gate=x.get("gate"),
                                initial_state=x["initial_state"], scale=SCALE, **kw)

    return f


IMPLS = {
    "sequential": lambda op: _op_call(op, "sequential"),
    "scan": lambda op: _op_call(op, "scan"),
    "chunked": lambda op: _op_call(op, "chunked"),
    "chunked-scan": lambda op: _op_call(op, "chunked", chunk_combine="scan"),
    "pallas": lambda op: _op_call(op, "pallas"),  # the sequential-chunk kernel on CPU
    # the other kernel organisations behind pallas_kernels.delta_product
    # (two value tiles: the bad column's tile and a clean one)
    "pallas-pre": lambda op: _kernel_call(chunk_size=C, precompute_inverse=True, block_v=3,
                                          interpret=True),
    "pallas-chunk": lambda op: _kernel_call(chunk_size=C, chunk_parallel=True, block_v=3,
                                            block_v_chunk=3, interpret=True),
    # the GPU organisation (16 x 16 blocks in delta_chunk._wu_blocks, token-major layout;
    # recurrent=False, else the GPU target picks delta_recurrent for these sizes)
    "pallas-chunk-gpu": lambda op: _kernel_call(chunk_size=32, chunk_parallel=True,
                                                recurrent=False, interpret=True,
                                                _target="gpu"),
    "pallas-recurrent": lambda op: _kernel_call(recurrent=True, block_v=4, interpret=True),
}
# the slow interpret-mode organisations run on the ops that reach their gated and n_h > 1
# paths
KERNEL_OPS = {"pallas-pre": ("delta_product",), "pallas-chunk": ("delta_rule", "delta_product"),
              "pallas-chunk-gpu": ("delta_product",),
              "pallas-recurrent": ("delta_rule", "delta_product")}


# The chunk kernels of pallas_kernels.delta_product / delta_chunk still spread a non-finite
# k, v, beta or gate to the earlier tokens of its chunk (a bad q stays in its row). Both fixes
# tried on 2026-12-04 cost too much on the H200 (DeltaNet bf16 (8, 2048, 16, 128) forward,
# 0.751 ms unchanged): sanitise and poison inside the kernels 1.481 ms, a guard around them
# (the finite part in, NaN set after) 1.079 ms. Open in issue #21 (item 9) until a cheaper
# in-kernel form is measured; strict, so the fix shows.
CHUNK_KERNELS = ("pallas", "pallas-pre", "pallas-chunk", "pallas-chunk-gpu")
CHUNK_KERNEL_XFAIL = pytest.mark.xfail(
    strict=True, reason="delta chunk kernels not NaN-causal yet (issue #21 item 9; the fixes "
                        "tried cost 44-97% of the forward on the H200)")


@functools.cache
def _run(op, impl, bad):
    x, xb, _ = _inputs(op)
    fn = jax.jit(IMPLS[impl](op))
    o, S = fn({n: jnp.asarray(a) for n, a in (xb if bad else x).items()})
    return np.asarray(o, np.float32), np.asarray(S, np.float32)


def _params():
    out = []
    for op, (_, gated) in OPS.items():
        for impl in IMPLS:
            if op not in KERNEL_OPS.get(impl, (op,)):
                continue
            for bad in BADS if gated else BADS[:-1]:
                for value in VALUES:
                    leaks = impl in CHUNK_KERNELS and bad != "q"
                    out.append(pytest.param(op, impl, bad, value,
                                            marks=CHUNK_KERNEL_XFAIL if leaks else ()))
    return out


def _where(mask):
    return [tuple(int(i) for i in ix) for ix in np.argwhere(mask)[:6]]


def check_causal(o, S, o_seq, S_seq, o_clean, S_clean, t, what, rtol, atol):
    """One row: o ``[T, H, dv]``, S ``[H, dk, dv]``; the bad value at token ``t``."""
    fin_seq = np.isfinite(o_seq)
    # the case means something: the sequential loop is finite before t, poisoned at t
    assert fin_seq[:t].all() and not fin_seq[t].all(), what
    fin = np.isfinite(o)
    leak = fin_seq & ~fin
    assert not leak.any(), (f"{what}: non-finite outputs where the sequential loop is finite, "
                            f"at (token, head, col) {_where(leak)}")
    silent = fin & ~fin_seq
    assert not silent.any(), (f"{what}: finite outputs where the sequential loop is not, at "
                              f"(token, head, col) {_where(silent)}")
    np.testing.assert_allclose(o[fin], o_clean[fin], rtol=rtol, atol=atol, err_msg=what)
    fs, fs_seq = np.isfinite(S), np.isfinite(S_seq)
    assert (fs == fs_seq).all(), (f"{what}: final state finite at {_where(fs & ~fs_seq)}, "
                                  f"non-finite at {_where(~fs & fs_seq)} against sequential")
    np.testing.assert_allclose(S[fs], S_clean[fs], rtol=rtol, atol=atol, err_msg=what)


# outputs before the bad token are the clean ones up to a few roundings (a sanitised value
# only ever meets exact zeros there); observed: bitwise equal
RTOL, ATOL = 1e-6, 1e-6


@pytest.mark.parametrize("op, impl, bad, value", _params())
def test_nonfinite_is_causal(op, impl, bad, value):
    o, S = _run(op, impl, True)
    o_clean, S_clean = _run(op, impl, False)
    o_seq, S_seq = _run(op, "sequential", True)
    for row, (name, val, t) in enumerate(_inputs(op)[2]):
        if (name, val) == (bad, value):
            check_causal(o[row], S[row], o_seq[row], S_seq[row], o_clean[row], S_clean[row],
                         t, f"{op} {impl} {bad}={value} at t={t}", RTOL, ATOL)


@pytest.mark.parametrize("op, impl", sorted({p.values[:2] for p in _params()}))
def test_clean_inputs_match_sequential(op, impl):
    """The clean runs the causality test compares with are themselves right."""
    o, S = _run(op, impl, False)
    o_seq, S_seq = _run(op, "sequential", False)
    np.testing.assert_allclose(o, o_seq, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(S, S_seq, rtol=1e-4, atol=2e-5)


# ------------------------------------------------------------------------------------------
# compiled kernels (GPU machine)
# ------------------------------------------------------------------------------------------
GPU_T, GPU_D = 1000, 128
# bad tokens inside chunks (of 64 or 32 sub-steps, n_h = 1 or 2), the second in the padded
# last chunk of 64 tokens
GPU_BAD_T = {517: 0, 990: 1}
GPU_VARIANTS = {  # name -> (dtype, op -> function of the inputs)
    # the kernel organisations (chunk_parallel: the 16 x 16 block form of delta_chunk)
    "bf16-chunk-parallel": (jnp.bfloat16, lambda op: _kernel_call(
        chunk_size=64, chunk_parallel=True, recurrent=False)),
    "bf16-precompute": (jnp.bfloat16, lambda op: _kernel_call(
        chunk_size=64, chunk_parallel=False, precompute_inverse=True, recurrent=False)),
    "f32-chunkwise": (jnp.float32, lambda op: _kernel_call(
        chunk_size=64, chunk_parallel=False, recurrent=False)),
    "f32-recurrent": (jnp.float32, lambda op: _kernel_call(recurrent=True)),
    # the XLA chunked form, compiled for the GPU
    "f32-xla-chunked": (jnp.float32, lambda op: _op_call(op, "chunked", chunk_size=64)),
}


GPU_CHUNK_KERNELS = ("bf16-chunk-parallel", "bf16-precompute", "f32-chunkwise")


def _sequential(x):
    """The token loop on DeltaProduct-layout inputs (any n_h)."""
    return ops.delta_product(x["q"], x["k"], x["v"], x["beta"], gate=x.get("gate"),
                             initial_state=x["initial_state"], scale=SCALE,
                             implementation="sequential")


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (compiled kernels)")
class TestCompiledGPU:
    @pytest.mark.parametrize("op", ["gated_delta_rule", "delta_product"])
    @pytest.mark.parametrize("variant", [
        pytest.param(v, marks=CHUNK_KERNEL_XFAIL) if v in GPU_CHUNK_KERNELS else v
        for v in GPU_VARIANTS])
    def test_nonfinite_is_causal_compiled(self, op, variant):
        x, xb, cases = _inputs(op, T=GPU_T, dk=GPU_D, dv=GPU_D, bad_t=GPU_BAD_T, seed=1)
        dtype, make = GPU_VARIANTS[variant]
        cast = lambda d: {n: jnp.asarray(a, dtype if n != "initial_state" else jnp.float32)
                          for n, a in d.items()}
        fn = jax.jit(make(op))
        o, S = (np.asarray(y, np.float32) for y in fn(cast(xb)))
        o_clean, S_clean = (np.asarray(y, np.float32) for y in fn(cast(x)))
        # the sequential loop on the same (rounded) values decides what is non-finite
        o_seq, S_seq = (np.asarray(y) for y in jax.jit(_sequential)(
            {n: jnp.asarray(a, jnp.float32) for n, a in cast(xb).items()}))
        tol = 1e-5 if dtype == jnp.float32 else 2e-2
        for row, (name, val, t) in enumerate(cases):
            check_causal(o[row], S[row], o_seq[row], S_seq[row], o_clean[row], S_clean[row],
                         t, f"{op} {variant} {name}={val} at t={t}", tol, tol)
