"""lrnn.ops.gated_linear_attention: every implementation vs a float64 NumPy loop.

Each (implementation, case) is compiled once for the forward pass and, for GRAD_CASES,
once for the gradients of every input, compared against the sequential implementation's
on the same case.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrnn import ops
from lrnn.numerics import random_inputs
from lrnn.ops import reference as ref

IMPLS = ("sequential", "scan", "chunked")
# (T, chunk_size, gate kind): lengths not multiples of the chunk, per-head and per-key gates
CASES = [(1, 16, "head"), (37, 16, "key"), (70, 16, "head"), (129, 64, "key")]
SCALE = 0.5
TOL = 2e-5  # float32; observed errors are ~1e-7


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


@functools.cache
def inputs(T, gate):
    x = random_inputs("gated_linear_attention", batch=2, length=T, heads=2, dk=8, dv=4,
                      gate=gate, gate_low=0.0, negative=0.4, seed=T)
    g = x["gate"].reshape(-1)
    # exact zeros, tiny, exactly +-1 and near-1 gates, all in the same sequence
    g[3::17], g[5::19], g[7::23], g[11::29], g[13::31] = 0.0, 1e-7, 1.0, -1.0, 0.999999
    return {k: v.astype(np.float32) for k, v in x.items()}


def _cot(T, x):
    rng = np.random.default_rng(1000 + T)
    return (rng.normal(size=x["v"].shape).astype(np.float32),
            rng.normal(size=x["initial_state"].shape).astype(np.float32))


def _call(x, **kw):
    return ops.gated_linear_attention(x["q"], x["k"], x["v"], x["gate"],
                                      initial_state=x["initial_state"], scale=SCALE, **kw)


@functools.cache
def run(impl, T, chunk, gate):
    """Forward only: (o, final_state)."""
    fn = jax.jit(functools.partial(_call, chunk_size=chunk, implementation=impl))
    return tuple(np.asarray(y) for y in fn(inputs(T, gate)))


@functools.cache
def run_grad(impl, T, chunk, gate):
    """Gradients of every input of a fixed random linear function of (o, final_state)."""
    x = inputs(T, gate)
    co, cS = _cot(T, x)

    def loss(x):
        o, S = _call(x, chunk_size=chunk, implementation=impl)
        return jnp.sum(o * co) + jnp.sum(S * cS)

    return {k: np.asarray(v) for k, v in jax.jit(jax.grad(loss))(x).items()}


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_matches_float64_loop(impl, case):
    T, chunk, gate = case
    x = inputs(T, gate)
    o, S = run(impl, *case)
    ro, rS = ref.gated_linear_attention(x["q"], x["k"], x["v"], x["gate"],
                                        x["initial_state"], SCALE)
    assert o.shape == ro.shape and S.shape == rS.shape
    assert rel(o, ro) < TOL
    assert rel(S, rS) < TOL


# Gradients cost ~3x a forward compile. The default run checks the chunked form on a
# per-key and a per-head case (both with zero, tiny, +-1 and near-1 gates) and the scan form
# on the first (lrnn.scan's own gradients are tested in tests/test_monoid.py); the rest run
# with -m slow.
_slow = pytest.mark.slow
GRAD_PARAMS = [
    ("chunked", CASES[1]),
    ("chunked", CASES[2]),
    ("scan", CASES[1]),
    pytest.param("scan", CASES[2], marks=_slow),
    pytest.param("chunked", CASES[0], marks=_slow),
    pytest.param("chunked", CASES[3], marks=_slow),
    pytest.param("scan", CASES[3], marks=_slow),
]


@pytest.mark.parametrize("impl, case", GRAD_PARAMS, ids=str)
def test_gradients_match_sequential(impl, case):
    g = run_grad(impl, *case)
    g_ref = run_grad("sequential", *case)
    assert set(g) == {"q", "k", "v", "gate", "initial_state"}
    for name in g:
        assert np.all(np.isfinite(g[name])), name
        assert rel(g[name], g_ref[name]) < TOL, name


def test_zero_gate_gradient_is_the_product_rule():
    # d/dg_1 of S_2 = g_2 (g_1 S_0 + k_1 v_1^T) + k_2 v_2^T at g_1 = 0 is g_2 S_0, per head.
    B, H, dk, dv = 1, 1, 2, 3
    rng = np.random.default_rng(0)
    S0 = jnp.asarray(rng.normal(size=(B, H, dk, dv)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, 2, H, dk)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(B, 2, H, dv)), jnp.float32)
    q = jnp.zeros((B, 2, H, dk), jnp.float32)

    def final(g, impl):
        return ops.gated_linear_attention(q, k, v, g, initial_state=S0,
                                          implementation=impl)[1].sum()

    g = jnp.asarray([[[0.0], [-0.5]]], jnp.float32)
    want = -0.5 * float(S0.sum())
    grad = jax.jit(jax.grad(final), static_argnums=1)
    for impl in IMPLS:
        got = grad(g, impl)
        np.testing.assert_allclose(got[0, 0, 0], want, rtol=1e-5, err_msg=impl)


def test_steps_equal_the_sequence():
    T, chunk, gate = 37, 16, "key"
    x = inputs(T, gate)
    o_full, S_full = run("chunked", T, chunk, gate)
    step = jax.jit(functools.partial(ops.gated_linear_attention_step, scale=SCALE))
    S = jnp.asarray(x["initial_state"])
    outs = []
    for t in range(T):
        o, S = step(x["q"][:, t], x["k"][:, t], x["v"][:, t], x["gate"][:, t], state=S)
        outs.append(o)
    assert S.dtype == jnp.float32
    assert rel(np.stack(outs, 1), o_full) < TOL
    assert rel(S, S_full) < TOL


def test_defaults_auto_and_chunk_combine():
    T, chunk, gate = 70, 16, "head"
    x = inputs(T, gate)
    args = (x["q"], x["k"], x["v"], x["gate"])
    ro, rS = ref.gated_linear_attention(*args)  # no initial state, scale 1
    fn = jax.jit(ops.gated_linear_attention,
                 static_argnames=("chunk_size", "chunk_combine", "implementation"))
    o, S = fn(*args, chunk_size=chunk, chunk_combine="scan", implementation="chunked")
    assert rel(o, ro) < TOL and rel(S, rS) < TOL
    # "auto" is, bit for bit, the implementation the measured rule picks for these shapes
    from lrnn.ops import _auto

    B, _, H, dk = np.shape(x["k"])
    pick = _auto.choose("gla", dict(B=B, T=T, H=H, dk=dk), jnp.result_type(x["q"]),
                        ("sequential", "scan", "chunked"))
    o3, S3 = fn(*args, chunk_size=chunk, chunk_combine="scan", implementation=pick)
    o2, S2 = fn(*args, chunk_size=chunk, chunk_combine="scan")
    np.testing.assert_array_equal(o2, o3)
    np.testing.assert_array_equal(S2, S3)


def test_bfloat16_inputs_accumulate_in_float32():
    T, chunk, gate = 70, 16, "head"
    x = {k: jnp.asarray(v, jnp.bfloat16) for k, v in inputs(T, gate).items()}
    o, S = jax.jit(functools.partial(ops.gated_linear_attention, scale=SCALE, chunk_size=chunk,
                                     implementation="chunked"))(
        x["q"], x["k"], x["v"], x["gate"], initial_state=x["initial_state"])
    assert o.dtype == jnp.bfloat16 and S.dtype == jnp.float32
    ro, rS = ref.gated_linear_attention(*(np.asarray(x[n], np.float32) for n in
                                          ("q", "k", "v", "gate", "initial_state")), SCALE)
    # the reference sees the same bf16-rounded inputs: the state (f32) is exact to ~1e-6,
    # the output carries bf16's own rounding (2^-9 relative)
    assert rel(S, rS) < 1e-5
    assert rel(o.astype(jnp.float32), ro) < 5e-3


def _bad(**over):
    x = dict(q=jnp.zeros((2, 5, 2, 8)), k=jnp.zeros((2, 5, 2, 8)), v=jnp.zeros((2, 5, 2, 4)),
             gate=jnp.ones((2, 5, 2)))
    kw = {k: over.pop(k) for k in list(over) if k not in x}
    x.update(over)
    return lambda: ops.gated_linear_attention(x["q"], x["k"], x["v"], x["gate"], **kw)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (_bad(k=jnp.zeros((2, 5, 8))), ValueError, r"k must have shape \[B, T, H, dk\]"),
        (_bad(q=jnp.zeros((2, 5, 2, 7))), ValueError, "q must have shape"),
        (_bad(v=jnp.zeros((2, 4, 2, 4))), ValueError, r"v must have shape \[B, T, H, dv\]"),
        (_bad(gate=jnp.ones((2, 5, 3))), ValueError, "gate must have shape"),
        (_bad(gate=jnp.ones((2, 5, 2, 7))), ValueError, r"gate must have shape .*per key"),
        (_bad(k=jnp.zeros((2, 5, 2, 8), jnp.int32)), TypeError, "k must be a floating"),
        (_bad(initial_state=jnp.zeros((2, 2, 8, 5))), ValueError, "initial_state must have"),
        (_bad(chunk_size=0), ValueError, "chunk_size must be a positive int"),
        (_bad(chunk_size=2.5), ValueError, "chunk_size must be a positive int"),
        (_bad(implementation="fast"), ValueError, r"implementation must be one of .*chunked"),
        (_bad(chunk_combine="tree"), ValueError, "chunk_combine must be one of"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()


# Per-key gates take one of three intra-chunk paths by chunk length C: sub-blocks of 16
# (C = 64 above), of 8 (C = 16 above, C = 24 here) or, when no sub-block size divides C
# (C = 30 here), the whole [C, C, dk] decay tensor. Forward and gradients for the last two.
@pytest.mark.parametrize("case", [(53, 24, "key"), (30, 30, "key")], ids=str)
def test_per_key_sub_block_paths(case):
    T, chunk, gate = case
    x = inputs(T, gate)
    o, S = run("chunked", *case)
    ro, rS = ref.gated_linear_attention(x["q"], x["k"], x["v"], x["gate"],
                                        x["initial_state"], SCALE)
    assert rel(o, ro) < TOL and rel(S, rS) < TOL
    g, g_ref = run_grad("chunked", *case), run_grad("sequential", *case)
    for name in g:
        assert rel(g[name], g_ref[name]) < TOL, name
