"""lrnn._compat: the version guards, in particular the empty-slice-free associative scan."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lrnn import _compat


def _affine_combine(a, b):  # (A, b) pairs of diagonal affine maps: a first, then b
    return (a[0] * b[0], b[0] * a[1] + b[1])


def _elems(n, shape=(3, 2), axis=0, seed=0):
    rng = np.random.default_rng(seed)
    full = list(shape)
    full.insert(axis, n)
    A = rng.uniform(-1, 1, full).astype(np.float32)
    b = rng.normal(size=full).astype(np.float32)
    return A, b


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_matches_lax_associative_scan(axis, reverse):
    for n in [1, 2, 3, 4, 5, 7, 8, 9, 16, 23, 33]:
        elems = _elems(n, axis=axis % 3, seed=n)
        got = _compat.associative_scan(_affine_combine, elems, reverse=reverse, axis=axis)
        # (JAX rejects reverse with a negative axis; ours normalises it)
        want = lax.associative_scan(_affine_combine, elems, reverse=reverse, axis=axis % 3)
        for g, w in zip(got, want):
            # same pairs combined in the same order: identical up to XLA's fusion choices
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=f"n={n}")


def test_matches_sequential_loop_non_commutative():
    # 2x2 matrix products: catches any swapped argument order.
    rng = np.random.default_rng(1)
    for n in [2, 5, 6, 11]:
        m = rng.normal(size=(n, 2, 2))
        got = _compat.associative_scan(lambda a, b: b @ a, jnp.asarray(m))
        acc, want = np.eye(2), []
        for t in range(n):
            acc = m[t] @ acc
            want.append(acc)
        np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-5)


def _avals(jaxpr):
    """Every value's aval in a jaxpr, nested ones (pjit, custom_jvp, scan bodies) included."""
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield v.aval
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    yield from _avals(sub)


@pytest.mark.parametrize("n", [2, 4, 5, 8, 10, 16, 64])
def test_no_empty_intermediates_forward_or_backward(n):
    """JAX's version slices empty arrays at these lengths; on jaxlib 0.11.2 an empty residual
    in shard_map's backward segfaults the compiler (see the function's docstring)."""
    elems = _elems(n)

    def loss(e):
        return jnp.sum(jnp.sin(_compat.associative_scan(_affine_combine, e)[1]))

    jaxpr = jax.make_jaxpr(jax.grad(loss))(elems).jaxpr
    empty = [a.shape for a in _avals(jaxpr) if hasattr(a, "shape") and 0 in a.shape]
    assert not empty, f"empty intermediates at n={n}: {empty}"
    # and the check itself can see empties: JAX's version makes one at these lengths
    ref = jax.make_jaxpr(
        jax.grad(lambda e: jnp.sum(lax.associative_scan(_affine_combine, e)[1]))
    )(elems).jaxpr
    assert any(0 in getattr(a, "shape", (1,)) for a in _avals(ref))


def test_gradient_through_shard_map():
    """The crash's shape on jax 0.11.2: grad of a shard_map over the scan (length 4 a shard)."""
    mesh = jax.make_mesh((2,), ("seq",))
    x = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)

    def body(x):
        return _compat.associative_scan(lambda a, b: a * b + b, x)

    f = _compat.shard_map(body, mesh=mesh, in_specs=jax.P("seq"), out_specs=jax.P("seq"))

    def loss(scan, x):
        return jnp.sum(jnp.sin(scan(x)))

    x_sh = jax.device_put(x, jax.NamedSharding(mesh, jax.P("seq")))
    g = jax.jit(jax.grad(functools.partial(loss, f)))(x_sh)
    ref = jax.grad(lambda x: sum(loss(body, xi) for xi in (x[:4], x[4:])))(x)
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        _compat.associative_scan(jnp.add, jnp.ones((2, 2)), axis=3)
    with pytest.raises(ValueError, match="same length"):
        _compat.associative_scan(lambda a, b: a, (jnp.ones(3), jnp.ones(4)))
