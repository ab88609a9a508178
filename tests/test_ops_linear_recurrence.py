"""lrnn.ops.linear_recurrence: every implementation vs a float64 NumPy loop, with gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrnn import ops
from lrnn.numerics import random_inputs
from lrnn.ops import reference as ref

IMPLS = ("sequential", "scan", "chunked")
CASES = [(1, 16), (37, 16), (70, 16), (129, 64)]  # (T, chunk_size)
TOL = 2e-5  # float32; observed errors are ~1e-7


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


@functools.cache
def inputs(T):
    x = random_inputs("linear_recurrence", batch=2, length=T, dk=6, gate_low=0.0,
                      negative=0.4, seed=T)
    a = x["a"].reshape(-1)
    a[3::17], a[5::19], a[7::23] = 0.0, -1.0, 1.0
    return {k: v.astype(np.float32) for k, v in x.items()}


@functools.cache
def forward(impl, T, chunk):
    x = inputs(T)
    fn = jax.jit(functools.partial(ops.linear_recurrence, implementation=impl, chunk_size=chunk))
    return np.asarray(fn(x["a"], x["b"], x["h0"]))


@functools.cache
def run(impl, T, chunk):
    x = inputs(T)
    cot = np.random.default_rng(T).normal(size=x["b"].shape).astype(np.float32)

    def loss(x):
        h = ops.linear_recurrence(x["a"], x["b"], x["h0"], implementation=impl,
                                  chunk_size=chunk)
        return jnp.sum(h * cot), h

    g, h = jax.jit(jax.grad(loss, has_aux=True))(x)
    return np.asarray(h), {k: np.asarray(v) for k, v in g.items()}


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_loop(impl, case):
    x = inputs(case[0])
    assert rel(forward(impl, *case), ref.linear_recurrence(x["a"], x["b"], x["h0"])) < TOL


# gradients compile ~3x slower than the forward pass: two cases by default, all with -m slow
GRAD_CASES = [CASES[1], CASES[3], pytest.param(CASES[0], marks=pytest.mark.slow),
              pytest.param(CASES[2], marks=pytest.mark.slow)]


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
@pytest.mark.parametrize("impl", ["scan", "chunked"])
def test_gradients_match_sequential(impl, case):
    x = inputs(case[0])
    h, g = run(impl, *case)
    assert rel(h, ref.linear_recurrence(x["a"], x["b"], x["h0"])) < TOL
    _, g_ref = run("sequential", *case)
    for name in ("a", "b", "h0"):
        assert np.all(np.isfinite(g[name])), name
        assert rel(g[name], g_ref[name]) < TOL, name


def test_steps_chunk_combine_and_bf16():
    T, chunk = 37, 16
    x = inputs(T)
    h_full = forward("chunked", T, chunk)
    step = jax.jit(ops.linear_recurrence_step)
    h = jnp.asarray(x["h0"])
    hs = []
    for t in range(T):
        h = step(x["a"][:, t], x["b"][:, t], h)
        hs.append(h)
    assert rel(np.stack(hs, 1), h_full) < TOL
    fn = jax.jit(functools.partial(ops.linear_recurrence, chunk_size=chunk,
                                   chunk_combine="scan", implementation="chunked"))
    assert rel(fn(x["a"], x["b"]), ref.linear_recurrence(x["a"], x["b"])) < TOL
    xb = {k: jnp.asarray(v, jnp.bfloat16) for k, v in x.items()}
    hb = fn(xb["a"], xb["b"], xb["h0"])
    assert hb.dtype == jnp.bfloat16
    want = ref.linear_recurrence(*(np.asarray(xb[n], np.float32) for n in ("a", "b", "h0")))
    assert rel(hb.astype(jnp.float32), want) < 5e-3  # bf16 output rounding, 2^-9


def test_summary_is_the_whole_sequence():
    T = 70
    x = inputs(T)
    s = ops.linear_recurrence_summary(x["a"], x["b"], chunk_size=16)
    np.testing.assert_allclose(s.A, np.prod(x["a"].astype(np.float64), axis=1), atol=1e-6)
    assert rel(s.b, ref.linear_recurrence(x["a"], x["b"])[:, -1]) < TOL


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(a=np.zeros((2, 5))), ValueError, r"a must have shape \[B, T, D\]"),
        (dict(b=np.zeros((2, 5, 4))), ValueError, "b must have shape"),
        (dict(h0=np.zeros((2, 4))), ValueError, r"h0 must have shape \[B, D\]"),
        (dict(a=np.zeros((2, 5, 3), np.int32)), TypeError, "a must be a floating"),
        (dict(chunk_size=0), ValueError, "chunk_size must be a positive int"),
        (dict(implementation="pallas_gpu"), ValueError, "implementation must be one of"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(kw, err, match):
    args = dict(a=np.zeros((2, 5, 3), np.float32), b=np.zeros((2, 5, 3), np.float32), h0=None)
    args.update(kw)
    a, b, h0 = args.pop("a"), args.pop("b"), args.pop("h0")
    with pytest.raises(err, match=match):
        ops.linear_recurrence(a, b, h0, **args)
