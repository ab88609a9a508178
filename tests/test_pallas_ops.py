"""`lrnn.ops.<op>(..., implementation="pallas")` against `implementation="sequential"`.

Interpret mode on CPU, small shapes, lengths that are not multiples of the chunk, negative
eigenvalues and initial states; forward, final state and input gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lrnn import ops

F32 = jnp.float32


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def _compare(fn, args, tol):
    rng = np.random.default_rng(7)

    def loss(impl):
        def f(*xs):
            out = fn(*xs, implementation=impl)
            leaves = jax.tree.leaves(out)
            return sum(jnp.sum(x * rng_w[i]) for i, x in enumerate(leaves)), leaves
        return f

    out_seq = jax.tree.leaves(fn(*args, implementation="sequential"))
    rng_w = [jnp.asarray(rng.normal(size=x.shape), F32) for x in out_seq]
    vg = {impl: jax.jit(jax.value_and_grad(loss(impl), range(len(args)), has_aux=True))(*args)
          for impl in ("pallas", "sequential")}
    (_, outs_p), grads_p = vg["pallas"]
    (_, outs_s), grads_s = vg["sequential"]
    for a, b in zip(outs_p, outs_s):
        assert rel(a, b) < tol
    for a, b in zip(grads_p, grads_s):
        assert rel(a, b) < tol


def test_ops_linear_recurrence_pallas():
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(-1, 1, (2, 29, 16)), F32)
    b = jnp.asarray(rng.normal(size=(2, 29, 16)), F32)
    h0 = jnp.asarray(rng.normal(size=(2, 16)), F32)
    _compare(lambda a, b, h0, implementation: ops.linear_recurrence(
        a, b, h0, implementation=implementation), [a, b, h0], 1e-5)


def test_ops_delta_product_pallas():
    rng = np.random.default_rng(1)
    B, T, H, n, dk, dv = 1, 19, 2, 2, 16, 16
    k = rng.normal(size=(B, T, H, n, dk))
    args = [rng.normal(size=(B, T, H, dk)), k / np.linalg.norm(k, axis=-1, keepdims=True),
            rng.normal(size=(B, T, H, n, dv)), rng.uniform(0, 2, (B, T, H, n)),
            np.sign(rng.normal(size=(B, T, H))) * rng.uniform(0.3, 1, (B, T, H)),
            rng.normal(size=(B, H, dk, dv))]
    args = [jnp.asarray(x, F32) for x in args]
    _compare(lambda q, k, v, b, g, h0, implementation: ops.delta_product(
        q, k, v, b, gate=g, initial_state=h0, scale=0.5, chunk_size=16,
        implementation=implementation), args, 1e-4)


def test_ops_gla_pallas():
    rng = np.random.default_rng(2)
    B, T, H, dk, dv = 1, 21, 2, 16, 16
    args = [rng.normal(size=(B, T, H, dk)), rng.normal(size=(B, T, H, dk)),
            rng.normal(size=(B, T, H, dv)),
            np.sign(rng.normal(size=(B, T, H, dk))) * rng.uniform(0.3, 1, (B, T, H, dk)),
            rng.normal(size=(B, H, dk, dv))]
    args = [jnp.asarray(x, F32) for x in args]
    _compare(lambda q, k, v, g, h0, implementation: ops.gated_linear_attention(
        q, k, v, g, initial_state=h0, scale=0.5, chunk_size=16,
        implementation=implementation), args, 1e-4)
