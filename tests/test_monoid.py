"""The monoid core: laws, scans against a float64 NumPy loop, gradients, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrnn
from lrnn import Affine

MONOIDS = {
    "diagonal": lrnn.DIAGONAL,
    "block2": lrnn.BlockDiagonal(2),
    "dense": lrnn.DENSE,
}
N, M = 4, 3  # state size, matrix-state width


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30)


def random_A(monoid, key, batch, scale=0.9):
    """Random transitions with spectral norm <= scale, including negative eigenvalues."""
    if monoid is lrnn.DIAGONAL:
        return jax.random.uniform(key, (*batch, N), minval=-1.0, maxval=1.0) * scale
    if isinstance(monoid, lrnn.BlockDiagonal):
        bs = monoid.block_size
        A = jax.random.normal(key, (*batch, N // bs, bs, bs))
        norm = jnp.linalg.norm(A, ord=2, axis=(-2, -1), keepdims=True)
        return A / jnp.max(norm, axis=-3, keepdims=True) * scale
    A = jax.random.normal(key, (*batch, N, N))
    return A / jnp.linalg.norm(A, ord=2, axis=(-2, -1), keepdims=True) * scale


def random_elems(monoid, key, batch, matrix):
    ka, kb = jax.random.split(key)
    A = random_A(monoid, ka, batch)
    b = jax.random.normal(kb, (*batch, N, M) if matrix else (*batch, N))
    return Affine(A, b)


def numpy_scan(monoid, elems, h0, axis, reverse):
    """Float64 loop over the time axis, on dense matrices: the independent reference."""
    A = np.moveaxis(np.asarray(monoid.to_dense(elems.A), np.float64), axis, 0)
    b = np.moveaxis(np.asarray(elems.b, np.float64), axis, 0)
    matrix = b.ndim == A.ndim
    h = np.zeros(b.shape[1:]) if h0 is None else np.asarray(h0, np.float64)
    out = np.zeros_like(b)
    order = range(A.shape[0] - 1, -1, -1) if reverse else range(A.shape[0])
    for t in order:
        if matrix:
            h = np.einsum("...ij,...jm->...im", A[t], h) + b[t]
        else:
            h = np.einsum("...ij,...j->...i", A[t], h) + b[t]
        out[t] = h
    return np.moveaxis(out, 0, axis)


# ------------------------------------------------------------------------------------------
# Monoid laws
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MONOIDS)
@pytest.mark.parametrize("matrix", [False, True], ids=["vector", "matrix"])
def test_associativity_and_identity(name, matrix):
    monoid = MONOIDS[name]
    for seed in range(5):
        keys = jax.random.split(jax.random.PRNGKey(seed), 3)
        e1, e2, e3 = (random_elems(monoid, k, (2,), matrix) for k in keys)
        left = monoid.combine(monoid.combine(e1, e2), e3)
        right = monoid.combine(e1, monoid.combine(e2, e3))
        for x, y in zip(left, right):
            assert rel(x, y) < 1e-6
        ident = monoid.identity(e1)
        for e in (monoid.combine(ident, e1), monoid.combine(e1, ident)):
            for x, y in zip(e, e1):
                assert rel(x, y) < 1e-7
        # combine(earlier, later) is "later after earlier" on dense matrices
        comb = monoid.combine(e1, e2)
        D1, D2 = (np.asarray(monoid.to_dense(e.A), np.float64) for e in (e1, e2))
        np.testing.assert_allclose(monoid.to_dense(comb.A), D2 @ D1, rtol=1e-5, atol=1e-6)
        h = np.asarray(jax.random.normal(keys[0], e1.b.shape), np.float64)
        two_steps = monoid.apply(e2, monoid.apply(e1, h))
        np.testing.assert_allclose(monoid.apply(comb, h), two_steps, rtol=1e-5, atol=1e-5)


def test_to_dense_formats():
    a = jnp.array([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(lrnn.DIAGONAL.to_dense(a), np.diag([1.0, -2.0, 3.0]))
    blocks = jnp.arange(8.0).reshape(2, 2, 2)
    dense = np.asarray(lrnn.BlockDiagonal(2).to_dense(blocks))
    np.testing.assert_array_equal(dense[:2, :2], blocks[0])
    np.testing.assert_array_equal(dense[2:, 2:], blocks[1])
    assert not dense[:2, 2:].any() and not dense[2:, :2].any()
    np.testing.assert_array_equal(lrnn.BlockDiagonal(2).from_dense(dense), blocks)


# ------------------------------------------------------------------------------------------
# scan == scan_sequential == float64 loop
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MONOIDS)
@pytest.mark.parametrize("matrix", [False, True], ids=["vector", "matrix"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("T", [1, 2, 7, 33, 100])
def test_scan_matches_references(name, matrix, reverse, T):
    monoid = MONOIDS[name]
    key = jax.random.PRNGKey(T)
    elems = random_elems(monoid, key, (T,), matrix)
    h0 = jax.random.normal(jax.random.PRNGKey(T + 1), elems.b.shape[1:])

    @jax.jit
    def run(elems, h0):  # one compile per case: all four variants
        return [
            fn(monoid, elems, init, reverse=reverse)
            for fn in (lrnn.scan, lrnn.scan_sequential)
            for init in (None, h0)
        ]

    outs = run(elems, h0)
    for i, out in enumerate(outs):
        ref = numpy_scan(monoid, elems, None if i % 2 == 0 else h0, 0, reverse)
        assert out.shape == elems.b.shape and out.dtype == elems.b.dtype
        assert rel(out, ref) < 2e-6, (i, rel(out, ref))


@pytest.mark.parametrize("name", MONOIDS)
@pytest.mark.parametrize("matrix", [False, True], ids=["vector", "matrix"])
def test_batch_axes_before_and_after_time(name, matrix):
    monoid = MONOIDS[name]
    B, T, C = 2, 9, 3
    elems = random_elems(monoid, jax.random.PRNGKey(0), (B, T, C), matrix)
    h0 = jax.random.normal(jax.random.PRNGKey(1), (B, C, *elems.b.shape[3:]))
    cases = [(axis, reverse) for axis in (1, -2) for reverse in (False, True)]

    @jax.jit
    def run(elems, h0):
        return [
            fn(monoid, elems, h0, axis=axis, reverse=reverse)
            for axis, reverse in cases
            for fn in (lrnn.scan, lrnn.scan_sequential)
        ]

    outs = run(elems, h0)
    for i, (_, reverse) in enumerate(cases):
        ref = numpy_scan(monoid, elems, h0, 1, reverse)
        assert rel(outs[2 * i], ref) < 2e-6 and rel(outs[2 * i + 1], ref) < 2e-6


@pytest.mark.parametrize("name", MONOIDS)
def test_vmap_over_batch(name):
    monoid = MONOIDS[name]
    elems = random_elems(monoid, jax.random.PRNGKey(2), (3, 11), matrix=True)
    h0 = jax.random.normal(jax.random.PRNGKey(3), (3, N, M))
    out = jax.jit(jax.vmap(lambda e, h: lrnn.scan(monoid, e, h)))(elems, h0)
    ref = numpy_scan(monoid, elems, h0, 1, False)
    assert rel(out, ref) < 2e-6


def test_compose_prefix_products():
    monoid = lrnn.DENSE
    elems = random_elems(monoid, jax.random.PRNGKey(4), (6,), matrix=False)
    comp = lrnn.compose(monoid, elems)
    A = np.asarray(elems.A, np.float64)
    prod = np.eye(N)
    for t in range(6):
        prod = A[t] @ prod
        np.testing.assert_allclose(comp.A[t], prod, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        comp.b, numpy_scan(monoid, elems, None, 0, False), rtol=1e-5, atol=1e-6
    )
    comp_rev = lrnn.compose(monoid, elems, reverse=True)
    prod = np.eye(N)
    for t in range(5, -1, -1):
        prod = A[t] @ prod
        np.testing.assert_allclose(comp_rev.A[t], prod, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MONOIDS)
@pytest.mark.parametrize("matrix", [False, True], ids=["vector", "matrix"])
def test_bfloat16_inputs(name, matrix):
    """bf16 inputs accumulate in f32: the error is that of rounding the inputs and output."""
    monoid = MONOIDS[name]
    elems = random_elems(monoid, jax.random.PRNGKey(5), (64,), matrix)
    h0 = jax.random.normal(jax.random.PRNGKey(6), elems.b.shape[1:])
    e16 = Affine(elems.A.astype(jnp.bfloat16), elems.b.astype(jnp.bfloat16))
    h16 = h0.astype(jnp.bfloat16)
    ref = numpy_scan(
        monoid,
        Affine(e16.A.astype(jnp.float32), e16.b.astype(jnp.float32)),
        h16.astype(jnp.float32),
        0,
        False,
    )
    for fn in (lrnn.scan, lrnn.scan_sequential):
        out = jax.jit(functools.partial(fn, monoid))(e16, h16)
        assert out.dtype == jnp.bfloat16
        # one bf16 rounding of the output: |err| <= 2^-8 relative
        assert rel(out, ref) < 2**-8, rel(out, ref)


# ------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MONOIDS)
@pytest.mark.parametrize("matrix", [False, True], ids=["vector", "matrix"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradients_match_sequential(name, matrix, reverse):
    monoid = MONOIDS[name]
    T = 13
    elems = random_elems(monoid, jax.random.PRNGKey(7), (T,), matrix)
    h0 = jax.random.normal(jax.random.PRNGKey(8), elems.b.shape[1:])
    w = jax.random.normal(jax.random.PRNGKey(9), elems.b.shape)

    def loss(fn, A, b, h0):
        return jnp.sum(w * fn(monoid, Affine(A, b), h0, reverse=reverse))

    g_par = jax.jit(jax.grad(functools.partial(loss, lrnn.scan), argnums=(0, 1, 2)))(*elems, h0)
    g_seq = jax.jit(jax.grad(functools.partial(loss, lrnn.scan_sequential), argnums=(0, 1, 2)))(
        *elems, h0
    )
    for gp, gs in zip(g_par, g_seq):
        assert rel(gp, gs) < 1e-5


# ------------------------------------------------------------------------------------------
# Negative eigenvalues compute parity
# ------------------------------------------------------------------------------------------
def test_diagonal_parity_exact():
    bits = jax.random.bernoulli(jax.random.PRNGKey(10), 0.5, (2, 300)).astype(jnp.float32)
    a = 1.0 - 2.0 * bits  # -1 on ones, +1 on zeros
    elems = Affine(a[..., None], jnp.zeros_like(a)[..., None])
    h = jax.jit(functools.partial(lrnn.scan, lrnn.DIAGONAL, axis=1))(elems, jnp.ones((2, 1)))
    h = h[..., 0]
    parity = (jnp.cumsum(bits, axis=1) % 2).astype(jnp.int32)
    np.testing.assert_array_equal(h, 1.0 - 2.0 * parity)  # exact, no rounding


def test_deltanet_reflection_parity():
    n, T = 4, 200
    k = jnp.ones((n,)) / 2.0  # unit norm
    bits = jax.random.bernoulli(jax.random.PRNGKey(11), 0.5, (T,)).astype(jnp.float32)
    beta = 2.0 * bits  # reflection on ones, identity on zeros

    @jax.jit
    def run(beta):
        elem = lrnn.transitions.householder_product(jnp.broadcast_to(k, (T, 1, n)), beta[:, None])
        return lrnn.scan(lrnn.DENSE, elem, k)

    h = run(beta)
    readout = h @ k
    parity = jnp.cumsum(bits) % 2
    np.testing.assert_allclose(readout, 1.0 - 2.0 * parity, atol=1e-5)
    assert np.array_equal(np.asarray(readout < 0), np.asarray(parity == 1))


# ------------------------------------------------------------------------------------------
# Errors at trace time
# ------------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    A = jnp.zeros((5, 4))
    with pytest.raises(ValueError, match=r"elems\.b must have shape"):
        lrnn.scan(lrnn.DIAGONAL, Affine(A, jnp.zeros((5, 3))))
    with pytest.raises(ValueError, match=r"must be square"):
        lrnn.scan(lrnn.DENSE, Affine(jnp.zeros((5, 4, 3)), jnp.zeros((5, 4))))
    with pytest.raises(ValueError, match=r"axis 2 is out of range"):
        lrnn.scan(lrnn.DIAGONAL, Affine(A, A), axis=2)
    with pytest.raises(ValueError, match=r"axis -2 is out of range"):
        lrnn.scan_sequential(lrnn.DIAGONAL, Affine(A, A), axis=-2)
    with pytest.raises(ValueError, match=r"h0 must have the shape"):
        lrnn.scan(lrnn.DIAGONAL, Affine(A, A), jnp.zeros((5,)))
    with pytest.raises(ValueError, match=r"\[\.\.\., n/2, 2, 2\]"):
        lrnn.scan(lrnn.BlockDiagonal(2), Affine(jnp.zeros((5, 2, 3, 3)), jnp.zeros((5, 6))))
    with pytest.raises(ValueError, match=r"does not divide"):
        lrnn.BlockDiagonal(4).from_dense(jnp.zeros((6, 6)))
    with pytest.raises(ValueError, match=r"block_size must be a positive int"):
        lrnn.BlockDiagonal(0)
    with pytest.raises(TypeError, match=r"floating-point"):
        lrnn.scan(lrnn.DIAGONAL, Affine(jnp.zeros((5, 4), jnp.int32), A))
    with pytest.raises(TypeError, match=r"lrnn.Affine"):
        lrnn.scan(lrnn.DIAGONAL, (A, A))
    # raised at trace time: inside jit, before anything runs
    with pytest.raises(ValueError, match=r"elems\.b must have shape"):
        jax.jit(lambda a, b: lrnn.scan(lrnn.DIAGONAL, Affine(a, b)))(A, jnp.zeros((5, 3)))
