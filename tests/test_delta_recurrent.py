"""pallas_kernels.delta_recurrent (DeltaNet / DeltaProduct token by token, one fused kernel
each way) in interpret mode: outputs, final state and every gradient against the float64
sequential op, with value tiles, gates, negative eigenvalues (beta up to 2) and an initial
state; and the `recurrent=` switch of `pallas_kernels.delta_product`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from lrnn import _compat, ops
from lrnn.numerics import random_inputs
from pallas_kernels.delta_recurrent import delta_recurrent

TOL = 2e-5  # float32; observed errors are ~1e-7


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


def _inputs(n_h, gated, dv, T=7):
    x = random_inputs("delta_product", batch=2, length=T, heads=2, dk=5, dv=dv, n_h=n_h,
                      gate="head" if gated else "none", seed=n_h)
    names = ["q", "k", "v", "beta"] + (["gate"] if gated else []) + ["initial_state"]
    rng = np.random.default_rng(0)
    cot = (rng.normal(size=(2, T, 2, dv)), rng.normal(size=(2, 2, 5, dv)))
    return {n: x[n] for n in names}, cot


def _loss(fn, cot):
    def f(d):
        o, S = fn(d)
        return jnp.sum(o * cot[0].astype(o.dtype)) + jnp.sum(S * cot[1].astype(S.dtype)), (o, S)

    return f


@pytest.mark.parametrize("n_h, gated, dv, block_v", [
    (1, False, 6, 4),  # two value tiles, dv padded to 8
    (2, True, 5, None),
    (3, False, 8, 8),
])
def test_matches_float64_sequential_with_gradients(n_h, gated, dv, block_v):
    x, cot = _inputs(n_h, gated, dv)
    kw = lambda d: dict(gate=d.get("gate"), initial_state=d["initial_state"], scale=0.7)
    pk_fn = lambda d: delta_recurrent(d["q"], d["k"], d["v"], d["beta"], block_v=block_v,
                                      **kw(d))
    ref_fn = lambda d: ops.delta_product(d["q"], d["k"], d["v"], d["beta"],
                                         implementation="sequential", **kw(d))
    x32 = {n: jnp.asarray(v, jnp.float32) for n, v in x.items()}
    g, (o, S) = jax.jit(jax.grad(_loss(pk_fn, cot), has_aux=True))(x32)
    with _compat.enable_x64():
        x64 = {n: jnp.asarray(v, jnp.float64) for n, v in x.items()}
        g64, (o64, S64) = jax.grad(_loss(ref_fn, cot), has_aux=True)(x64)
        g64 = {n: np.asarray(v) for n, v in g64.items()}
        o64, S64 = np.asarray(o64), np.asarray(S64)
    assert o.dtype == jnp.float32 and S.dtype == jnp.float32
    assert rel(o, o64) < TOL and rel(S, S64) < TOL
    for n in x:
        assert np.all(np.isfinite(g[n])), n
        assert rel(g[n], g64[n]) < TOL, n


def test_delta_product_switch_and_defaults():
    x, _ = _inputs(2, True, 4)
    a = [jnp.asarray(x[n], jnp.float32) for n in ("q", "k", "v", "beta")]
    kw = dict(gate=jnp.asarray(x["gate"], jnp.float32), scale=0.5)
    o1, S1 = pk.delta_product(*a, recurrent=True, **kw)
    o2, S2 = pk.delta_product(*a, recurrent=False, **kw)
    assert rel(o1, o2) < TOL and rel(S1, S2) < TOL
    # the default is the chunkwise kernel off the GPU (interpret mode on CPU)
    o3, _ = pk.delta_product(*a, **kw)
    np.testing.assert_array_equal(np.asarray(o3), np.asarray(o2))
    ob, _ = delta_recurrent(*(v.astype(jnp.bfloat16) for v in a), **kw)
    assert ob.dtype == jnp.bfloat16


@pytest.mark.parametrize("kw, match", [
    (dict(q=np.zeros((2, 3, 4))), r"q must be \[B, T, H, dk\]"),
    (dict(k=np.zeros((2, 3, 1, 1, 5))), r"k must be \[B, T, H, n_h, dk\]"),
    (dict(v=np.zeros((2, 3, 1, 2, 4))), r"v must be \[B, T, H, n_h, dv\]"),
    (dict(beta=np.zeros((2, 3, 1))), "beta must be"),
    (dict(gate=np.zeros((2, 3))), "gate must be"),
    (dict(initial_state=np.zeros((2, 1, 4, 3))), "initial_state must be"),
    (dict(block_v=3), "block_v must be a power of two"),
])
def test_bad_inputs_raise_naming_the_argument(kw, match):
    args = dict(q=np.zeros((2, 3, 1, 4)), k=np.zeros((2, 3, 1, 1, 4)),
                v=np.zeros((2, 3, 1, 1, 4)), beta=np.zeros((2, 3, 1, 1)))
    args.update(kw)
    pos = [jnp.asarray(args.pop(n), jnp.float32) for n in ("q", "k", "v", "beta")]
    rest = {n: (jnp.asarray(v, jnp.float32) if isinstance(v, np.ndarray) else v)
            for n, v in args.items()}
    with pytest.raises(ValueError, match=match):
        delta_recurrent(*pos, **rest)


def test_vmap_and_bf16_gradients():
    x, cot = _inputs(2, True, 4)
    names = list(x)
    fn = lambda d: delta_recurrent(d["q"], d["k"], d["v"], d["beta"], gate=d["gate"],
                                   initial_state=d["initial_state"], scale=0.5)
    x32 = {n: jnp.asarray(v, jnp.float32) for n, v in x.items()}
    g32, _ = jax.grad(_loss(fn, cot), has_aux=True)(x32)
    # two "seeds" through jax.vmap (seed ensembles vmap whole models)
    xv = {n: jnp.stack([v, v[::-1]]) for n, v in x32.items()}
    gv, (ov, _) = jax.jit(jax.vmap(jax.grad(_loss(fn, cot), has_aux=True)))(xv)
    x1 = {n: v[1] for n, v in xv.items()}
    g1, (o1, _) = jax.grad(_loss(fn, cot), has_aux=True)(x1)
    assert rel(ov[1], o1) < TOL
    for n in names:
        assert rel(gv[n][0], g32[n]) < TOL and rel(gv[n][1], g1[n]) < TOL, n
    # bfloat16 inputs: arithmetic in f32, so the gradients are the f32 ones of the rounded inputs
    xb = {n: v.astype(jnp.bfloat16) for n, v in x32.items()}
    gb, _ = jax.grad(_loss(fn, cot), has_aux=True)(xb)
    gr, _ = jax.grad(_loss(fn, cot), has_aux=True)({n: v.astype(jnp.float32)
                                                     for n, v in xb.items()})
    for n in names:
        assert gb[n].dtype == jnp.bfloat16
        assert rel(gb[n].astype(jnp.float32), gr[n]) < 1e-2, n  # bf16 rounding of the result


def test_recurrent_default():
    from pallas_kernels.delta_product import RECURRENT_MAX_STATE_BYTES, recurrent_default

    f32, bf16 = jnp.float32, jnp.bfloat16
    assert recurrent_default(256, 40, 4, 1, 32, 32, f32)
    assert not recurrent_default(256, 40, 4, 1, 32, 32, bf16)  # chunk-parallel kernels win
    assert not recurrent_default(8, 4096, 4, 1, 32, 32, f32)  # longer than measured
    assert not recurrent_default(8, 64, 4, 1, 256, 256, f32)  # wider than measured
    B = RECURRENT_MAX_STATE_BYTES // (4 * 8 * 128 * 4 * 32 * 32) + 1
    assert not recurrent_default(B, 128, 8, 4, 32, 32, f32)  # the saved states' memory
