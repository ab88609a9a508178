"""lrnn.ops.structured_recurrence: the SLiCE structures vs a float64 NumPy loop.

The sequential implementation uses the cheap structured apply (``slice_apply``), "scan" and
"chunked" the monoid elements (``slice_transition`` in ``slice_monoid``): the test compares
both against the dense float64 loop, for features and for precomputed elements.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrnn
from lrnn import ops
from lrnn import transitions as tr
from lrnn.ops import reference as ref

IMPLS = ("sequential", "scan", "chunked")
B, T, D_IN, N = 2, 37, 3, 8
CHUNK = 16
TOL = 2e-5


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


def _weights(structure, rng):
    f = lambda *s: jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32)
    if structure == "diagonal":
        return f(D_IN, N)
    if structure == "block_diagonal":
        return f(D_IN, N // 4, 4, 4)
    if structure == "dense":
        return f(D_IN, N, N) * 0.5
    if structure == "walsh_hadamard":
        return f(D_IN, N)
    if structure == "sparse":
        return f(D_IN, N, N), jnp.asarray(rng.random((N, N)) < 0.3)
    return f(D_IN, N), f(D_IN, N, 2), f(D_IN, N, 2)  # dplr


@functools.cache
def case(structure):
    rng = np.random.default_rng(len(structure))
    x = jnp.asarray(rng.normal(size=(B, T, D_IN)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(B, T, N)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=(B, N)), jnp.float32)
    w = _weights(structure, rng)
    m = tr.slice_monoid(structure, w)
    A = tr.slice_transition(x, w, structure)
    want = ref.structured_recurrence(np.asarray(m.to_dense(A)), b, h0)
    return x, w, b, h0, want


# "scan" runs lrnn.scan on the same elements "chunked" uses (lrnn.scan is tested in
# tests/test_monoid.py): by default it runs on the two structures whose cheap apply differs
# most from the dense matrix, every structure with -m slow (each case is one compile).
FEATURE_PARAMS = [(s, i) for s in tr.STRUCTURES for i in ("sequential", "chunked")] + [
    (s, "scan") if s in ("walsh_hadamard", "dplr")
    else pytest.param(s, "scan", marks=pytest.mark.slow) for s in tr.STRUCTURES]


@pytest.mark.parametrize("structure, impl", FEATURE_PARAMS)
def test_features_match_float64_loop(structure, impl):
    x, w, b, h0, want = case(structure)
    fn = jax.jit(lambda x, w, b, h0: ops.structured_recurrence(
        x, w, b, structure=structure, h0=h0, implementation=impl, chunk_size=CHUNK))
    h = fn(x, w, b, h0)
    assert h.shape == (B, T, N)
    assert rel(h, want) < TOL


# the scan gradients are lrnn.scan's (tests/test_monoid.py); a compile here costs ~5 s
@pytest.mark.parametrize(
    "impl", ["sequential", "chunked", pytest.param("scan", marks=pytest.mark.slow)])
def test_elements_and_gradients(impl):
    structure = "block_diagonal"
    x, w, b, h0, want = case(structure)
    m = tr.slice_monoid(structure, w)
    cot = np.random.default_rng(0).normal(size=want.shape).astype(np.float32)

    def loss(x, b, h0, impl):
        A = tr.slice_transition(x, w, structure)
        h = ops.structured_recurrence(lrnn.Affine(A, b), monoid=m, h0=h0,
                                      implementation=impl, chunk_size=CHUNK)
        return jnp.sum(h * cot), h

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    g, h = grad(x, b, h0, impl)
    assert rel(h, want) < TOL
    g_ref, _ = grad(x, b, h0, "sequential")
    for gi, gr in zip(g, g_ref):
        assert np.all(np.isfinite(gi))
        assert rel(gi, gr) < TOL


def test_steps_equal_the_sequence():
    structure = "walsh_hadamard"
    x, w, b, h0, want = case(structure)
    step = jax.jit(functools.partial(ops.structured_recurrence_step, structure=structure))
    h = h0
    for t in range(T):
        h = step(x[:, t], w, b[:, t], h)
    assert rel(h, want[:, -1]) < TOL
    summary = jax.jit(functools.partial(ops.structured_summary, structure=structure,
                                        chunk_size=CHUNK))(x, w, b)
    assert rel(summary.b, ref.structured_recurrence(
        np.asarray(tr.slice_transition(x, w, structure)), b)[:, -1]) < TOL


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda x, w, b: ops.structured_recurrence(x, w, b, structure="toeplitz"),
         ValueError, "structure must be one of"),
        (lambda x, w, b: ops.structured_recurrence(x[0], w, b, structure="diagonal"),
         ValueError, r"x must have shape \[B, T, d_in\]"),
        (lambda x, w, b: ops.structured_recurrence(x, w, b[..., :4], structure="diagonal"),
         ValueError, "b must have shape"),
        (lambda x, w, b: ops.structured_recurrence(lrnn.Affine(x, b)), TypeError,
         "pass monoid="),
        (lambda x, w, b: ops.structured_recurrence(x, w, b, structure="diagonal",
                                                   implementation="pallas"),
         ValueError, "no 'pallas' implementation"),
    ],
)
def test_bad_inputs(call, err, match):
    x, w, b, _, _ = case("diagonal")
    with pytest.raises(err, match=match):
        call(x, w, b)
