"""The Pallas kernels per shard: ``implementation="pallas"`` inside ``sequence_sharded``.

Sequence-parallel training on GPUs runs the Pallas kernels inside ``jax.shard_map``. On CPU
they run in interpret mode, which jax cannot trace under shard_map's varying-axes check
(``check_vma=True``): that case must fail with a clear error naming the way out, and with
``check_vma=False`` the sharded pallas call must equal the unsharded sequential reference,
forward, final state and the gradients of every input. P = 2, local length 20 (not a multiple
of the chunk 16), negative eigenvalues, gates and an initial state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrnn.ops
from lrnn import parallel

B, T, H, D, C, P = 1, 40, 2, 16, 16, 2


def rel(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def _inputs(op):
    ks = jax.random.split(jax.random.key(3), 6)
    q = jax.random.normal(ks[0], (B, T, H, D))
    k = jax.random.normal(ks[1], (B, T, H, D))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (B, T, H, D))
    S0 = jax.random.normal(ks[5], (B, H, D, D))
    if op == "gla":  # per-key gates in [-1, 1]
        return (q, k, v, jax.random.uniform(ks[3], (B, T, H, D), minval=-1.0)), {}, S0
    beta = jax.random.uniform(ks[3], (B, T, H), maxval=2.0)  # eigenvalues down to -1
    return (q, k, v, beta, jax.random.uniform(ks[4], (B, T, H), minval=-1.0)), {}, S0


def _fn(op, impl):
    f = lrnn.ops.gated_linear_attention if op == "gla" else lrnn.ops.delta_rule

    def call(*xs, initial_state, **kw):
        if op == "gla":
            return f(*xs, initial_state=initial_state, scale=0.25, chunk_size=C,
                     implementation=impl, **kw)
        q, k, v, beta, gate = xs
        return f(q, k, v, beta, gate=gate, initial_state=initial_state, scale=0.25,
                 chunk_size=C, implementation=impl, **kw)

    return call


def _loss(fn):
    def loss(xs, S0):
        o, S = fn(*xs, initial_state=S0)
        return jnp.sum(jnp.sin(o)) + jnp.sum(S * S), (o, S)

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


@pytest.mark.parametrize("op", ["delta", "gla"])
def test_pallas_per_shard_matches_sequential(op):
    mesh = jax.make_mesh((P,), ("seq",), (jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:P])
    xs, _, S0 = _inputs(op)
    sharded = parallel.sequence_sharded(_fn(op, "pallas"), mesh, "seq", exchange="ppermute",
                                        check_vma=False)
    (_, (o, S)), g = jax.jit(_loss(sharded))(xs, S0)
    (_, (ro, rS)), rg = jax.jit(_loss(_fn(op, "sequential")))(xs, S0)
    assert rel(o, ro) < 2e-5 and rel(S, rS) < 2e-5
    for i, (a, b) in enumerate(zip(jax.tree.leaves(g), jax.tree.leaves(rg))):
        assert np.all(np.isfinite(a)), i
        assert rel(a, b) < 1e-4, (i, rel(a, b))


def test_interpret_mode_under_vma_check_is_a_clear_error():
    mesh = jax.make_mesh((P,), ("seq",), (jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:P])
    xs, _, S0 = _inputs("gla")
    sharded = parallel.sequence_sharded(_fn("gla", "pallas"), mesh, "seq")
    with pytest.raises(ValueError, match="check_vma=False"):
        jax.jit(sharded)(*xs, initial_state=S0)
