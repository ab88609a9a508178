"""Each token parameterisation against its definition (explicit dense constructions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrnn
from lrnn import transitions as tr


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30)


@pytest.mark.parametrize("n_h", [1, 2, 3])
@pytest.mark.parametrize("with_v", [False, True])
@pytest.mark.parametrize("with_gate", [False, True])
def test_householder_product_definition(n_h, with_v, with_gate):
    n, m, B = 5, 3, 4
    ks = jax.random.split(jax.random.PRNGKey(n_h), 4)
    k = jax.random.normal(ks[0], (B, n_h, n))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    beta = jax.random.uniform(ks[1], (B, n_h), maxval=2.0)
    v = jax.random.normal(ks[2], (B, n_h, m)) if with_v else None
    gate = jax.random.uniform(ks[3], (B,), minval=-1.0) if with_gate else None
    A, b = tr.householder_product(k, beta, v, gate)
    kn, bn = np.asarray(k, np.float64), np.asarray(beta, np.float64)
    for i in range(B):
        H = [np.eye(n) - bn[i, j] * np.outer(kn[i, j], kn[i, j]) for j in range(n_h)]
        A_ref = np.eye(n) * (1.0 if gate is None else float(gate[i]))
        for j in range(n_h):
            A_ref = H[j] @ A_ref
        np.testing.assert_allclose(A[i], A_ref, rtol=1e-5, atol=1e-6)
        if v is None:
            assert b.shape == (B, n) and not np.asarray(b).any()
            continue
        b_ref = np.zeros((n, m))
        for j in range(n_h):
            tail = np.eye(n)
            for l in range(j + 1, n_h):
                tail = H[l] @ tail
            b_ref += tail @ (bn[i, j] * np.outer(kn[i, j], np.asarray(v[i, j], np.float64)))
        np.testing.assert_allclose(b[i], b_ref, rtol=1e-5, atol=1e-6)


def test_householder_element_is_the_delta_rule_token():
    """One element applied to S equals gate * S then n_h delta-rule steps."""
    n, m, n_h = 4, 3, 2
    ks = jax.random.split(jax.random.PRNGKey(0), 5)
    k = jax.random.normal(ks[0], (n_h, n))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    beta = jnp.array([0.3, 1.7])
    v = jax.random.normal(ks[1], (n_h, m))
    S = jax.random.normal(ks[2], (n, m))
    gate = jnp.array(-0.6)
    out = lrnn.DENSE.apply(tr.householder_product(k, beta, v, gate), S)
    ref = np.asarray(S, np.float64) * float(gate)
    for j in range(n_h):
        kj = np.asarray(k[j], np.float64)
        ref = ref - beta[j] * np.outer(kj, kj @ ref) + beta[j] * np.outer(kj, v[j])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_reflection_has_eigenvalue_minus_one():
    n = 6
    k = jax.random.normal(jax.random.PRNGKey(1), (1, n))
    k = k / jnp.linalg.norm(k)
    A, _ = tr.householder_product(k, jnp.array([2.0]))
    eig = np.sort(np.linalg.eigvalsh(np.asarray(A, np.float64)))
    np.testing.assert_allclose(eig, [-1.0] + [1.0] * (n - 1), atol=1e-6)
    # beta in [0, 1] keeps the spectrum in [0, 1]
    A, _ = tr.householder_product(k, jnp.array([0.4]))
    eig = np.sort(np.linalg.eigvalsh(np.asarray(A, np.float64)))
    np.testing.assert_allclose(eig, [0.6] + [1.0] * (n - 1), atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 8, 32])
def test_walsh_hadamard(n):
    H = np.asarray(tr.hadamard_matrix(n), np.float64)
    np.testing.assert_allclose(H @ H.T, np.eye(n), atol=1e-6)  # orthogonal
    if n >= 2:  # Sylvester recursion
        h = np.asarray(tr.hadamard_matrix(n // 2), np.float64)
        np.testing.assert_allclose(H * np.sqrt(2), np.block([[h, h], [h, -h]]), atol=1e-6)
    ks = jax.random.split(jax.random.PRNGKey(n), 3)
    w = jax.random.normal(ks[0], (3, n))
    dense = tr.walsh_hadamard(w)
    np.testing.assert_allclose(dense, H[None] * np.asarray(w)[:, None, :], rtol=1e-6, atol=1e-6)
    hv = jax.random.normal(ks[1], (3, n))
    hm = jax.random.normal(ks[2], (3, n, 2))
    assert rel(tr.walsh_hadamard_apply(w, hv), np.einsum("bij,bj->bi", dense, hv)) < 1e-6
    assert rel(tr.walsh_hadamard_apply(w, hm), np.einsum("bij,bjm->bim", dense, hm)) < 1e-6


def test_dplr_and_sparse():
    ks = jax.random.split(jax.random.PRNGKey(3), 6)
    d = jax.random.normal(ks[0], (2, 5))
    u = jax.random.normal(ks[1], (2, 5, 2))
    v = jax.random.normal(ks[2], (2, 5, 2))
    D = tr.dplr(d, u, v)
    ref = np.stack([np.diag(d[i]) + np.asarray(u[i]) @ np.asarray(v[i]).T for i in range(2)])
    np.testing.assert_allclose(D, ref, rtol=1e-5, atol=1e-6)
    h = jax.random.normal(ks[3], (2, 5))
    assert rel(tr.dplr_apply(d, u, v, h), np.einsum("bij,bj->bi", ref, h)) < 1e-6
    hm = jax.random.normal(ks[4], (2, 5, 3))
    assert rel(tr.dplr_apply(d, u, v, hm), np.einsum("bij,bjm->bim", ref, hm)) < 1e-6
    values = jax.random.normal(ks[5], (2, 5, 5))
    mask = np.random.default_rng(0).random((5, 5)) < 0.3
    np.testing.assert_array_equal(tr.sparse(values, mask), np.asarray(values) * mask)


def _slice_weights(structure, d_in, n, key):
    ks = jax.random.split(key, 3)
    if structure in ("diagonal", "walsh_hadamard"):
        return jax.random.normal(ks[0], (d_in, n))
    if structure == "block_diagonal":
        return jax.random.normal(ks[0], (d_in, n // 4, 4, 4))
    if structure == "dense":
        return jax.random.normal(ks[0], (d_in, n, n))
    if structure == "sparse":
        return (jax.random.normal(ks[0], (d_in, n, n)), jax.random.bernoulli(ks[1], 0.3, (n, n)))
    return (
        jax.random.normal(ks[0], (d_in, n)),
        jax.random.normal(ks[1], (d_in, n, 2)),
        jax.random.normal(ks[2], (d_in, n, 2)),
    )


def _slice_dense_reference(x, weights, structure, n):
    """A_t = I + sum_i x^i A^i with each A^i built densely in float64."""
    x = np.asarray(x, np.float64)
    d_in = x.shape[-1]
    if structure == "sparse":
        mats = [np.asarray(weights[0][i], np.float64) * np.asarray(weights[1]) for i in range(d_in)]
    elif structure == "dplr":
        d, u, v = (np.asarray(w, np.float64) for w in weights)
        mats = [np.diag(d[i]) + u[i] @ v[i].T for i in range(d_in)]
    elif structure == "diagonal":
        mats = [np.diag(np.asarray(weights[i], np.float64)) for i in range(d_in)]
    elif structure == "walsh_hadamard":
        H = np.asarray(tr.hadamard_matrix(n), np.float64)
        mats = [H @ np.diag(np.asarray(weights[i], np.float64)) for i in range(d_in)]
    elif structure == "block_diagonal":
        W = np.asarray(weights, np.float64)
        mats = []
        for i in range(d_in):
            M = np.zeros((n, n))
            for blk in range(W.shape[1]):
                s = slice(4 * blk, 4 * blk + 4)
                M[s, s] = W[i, blk]
            mats.append(M)
    else:
        mats = [np.asarray(weights[i], np.float64) for i in range(d_in)]
    return np.eye(n) + np.einsum("...i,inm->...nm", x, np.stack(mats))


@pytest.mark.parametrize("structure", tr.STRUCTURES)
def test_slice_transition_against_dense(structure):
    n, d_in = 8, 3
    key = jax.random.PRNGKey(5)
    weights = _slice_weights(structure, d_in, n, key)
    x = jax.random.normal(jax.random.PRNGKey(6), (7, d_in))
    A = tr.slice_transition(x, weights, structure)
    monoid = tr.slice_monoid(structure, weights)
    expected_shape = {
        "diagonal": (7, n),
        "block_diagonal": (7, n // 4, 4, 4),
    }.get(structure, (7, n, n))
    assert A.shape == expected_shape  # stays in its monoid's storage format
    ref = _slice_dense_reference(x, weights, structure, n)
    assert rel(monoid.to_dense(A), ref) < 1e-6
    h = jax.random.normal(jax.random.PRNGKey(7), (7, n))
    assert rel(tr.slice_apply(x, weights, structure, h), np.einsum("tij,tj->ti", ref, h)) < 1e-6


def test_eigenvalue_ranges():
    x = jnp.linspace(-30.0, 30.0, 101)
    for fn, lo, hi in ((tr.unit_gate, 0, 1), (tr.signed_gate, -1, 1)):
        y = np.asarray(fn(x))
        assert y.min() >= lo and y.max() <= hi and y.min() < lo + 1e-3 and y.max() > hi - 1e-3
    np.testing.assert_allclose(tr.signed_gate(x), 2 * jax.nn.sigmoid(x) - 1, atol=1e-6)
    a_unit = np.asarray(tr.mamba_gate(x, -1.0))
    a_signed = np.asarray(tr.mamba_gate(x, -1.0, signed=True))
    assert a_unit.min() >= 0 and a_unit.max() <= 1
    np.testing.assert_allclose(a_signed, 2 * a_unit - 1, atol=1e-6)
    assert a_signed.min() < -0.99  # large steps reach eigenvalue -1
    for signed, hi in ((False, 1.0), (True, 2.0)):
        b = np.asarray(tr.householder_beta(x, signed=signed))
        assert b.min() >= 0 and b.max() <= hi and b.max() > hi - 1e-3


def test_transition_errors():
    with pytest.raises(ValueError, match=r"power of two"):
        tr.walsh_hadamard(jnp.ones((3, 6)))
    with pytest.raises(ValueError, match=r"power of two"):
        tr.slice_transition(jnp.ones((2, 3)), jnp.ones((3, 12)), "walsh_hadamard")
    with pytest.raises(ValueError, match=r"beta must have shape"):
        tr.householder_product(jnp.ones((4, 2, 3)), jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"v must have shape"):
        tr.householder_product(jnp.ones((4, 2, 3)), jnp.ones((4, 2)), jnp.ones((4, 3, 3)))
    with pytest.raises(ValueError, match=r"structure must be one of"):
        tr.slice_transition(jnp.ones((2, 3)), jnp.ones((3, 4)), "circulant")
    with pytest.raises(ValueError, match=r"d_in = 3"):
        tr.slice_transition(jnp.ones((2, 3)), jnp.ones((2, 4)), "diagonal")
    with pytest.raises(ValueError, match=r"u must have shape"):
        tr.dplr(jnp.ones(4), jnp.ones((5, 2)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"mask must have shape"):
        tr.sparse(jnp.ones((4, 4)), jnp.ones((3, 3)))
