"""lrnn.ops.selective_scan (Mamba's scan): every implementation, the fused Pallas kernel in
interpret mode included, against a float64 NumPy loop and float64 gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrnn import _compat, ops
from lrnn.numerics import random_inputs
from lrnn.ops import reference as ref

IMPLS = ("sequential", "scan", "chunked", "pallas")
NAMES = ("u", "delta", "A", "Bm", "Cm", "h0")
T, CHUNK = 13, 4  # T not a multiple of the chunk; N = 5 not a power of two (padded in pallas)
TOL = 2e-5  # float32; observed errors are ~1e-7


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


@functools.cache
def inputs():
    x = random_inputs("selective_scan", batch=2, length=T, dk=6, dv=5, seed=3)
    # large steps too: exp(delta A) near 0, so signed eigenvalues near -1
    x["delta"][:, ::3] *= 8.0
    return {k: v.astype(np.float32) for k, v in x.items()}


def _loss(impl, signed, cot):
    def f(*xs):
        y = ops.selective_scan(*xs, signed=signed, implementation=impl, chunk_size=CHUNK)
        return jnp.sum(y * cot.astype(y.dtype)), y

    return f


@functools.cache
def grads64(signed):
    x = inputs()
    cot = np.random.default_rng(0).normal(size=x["u"].shape)
    with _compat.enable_x64():
        xs = [jnp.asarray(x[n], jnp.float64) for n in NAMES]
        g, _ = jax.grad(_loss("sequential", signed, jnp.asarray(cot)), range(6),
                        has_aux=True)(*xs)
        return [np.asarray(v) for v in g], cot


@pytest.mark.parametrize("signed", [False, True], ids=["unit", "signed"])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_float64_loop_with_gradients(impl, signed):
    x = inputs()
    g64, cot = grads64(signed)
    xs = [jnp.asarray(x[n]) for n in NAMES]
    g, y = jax.jit(jax.grad(_loss(impl, signed, jnp.asarray(cot, jnp.float32)), range(6),
                            has_aux=True))(*xs)
    want = ref.selective_scan(*(x[n] for n in NAMES), signed=signed)
    assert y.dtype == jnp.float32
    assert rel(y, want) < TOL
    for name, gi, gr in zip(NAMES, g, g64):
        assert np.all(np.isfinite(gi)), name
        assert rel(gi, gr) < TOL, name


def test_no_initial_state_and_bf16():
    x = inputs()
    xs = [jnp.asarray(x[n]) for n in NAMES[:5]]
    want = ref.selective_scan(*xs, signed=True)
    y = ops.selective_scan(*xs, signed=True, implementation="pallas")
    assert rel(y, want) < TOL
    xb = [v.astype(jnp.bfloat16) for v in xs]
    yb = ops.selective_scan(*xb, signed=True, implementation="pallas")
    assert yb.dtype == jnp.bfloat16
    want = ref.selective_scan(*(np.asarray(v, np.float32) for v in xb), signed=True)
    assert rel(yb.astype(jnp.float32), want) < 5e-3  # bf16 output rounding, 2^-9


def test_steps_equal_the_whole_sequence():
    x = inputs()
    full = ops.selective_scan(*(x[n] for n in NAMES), signed=True, implementation="sequential")
    h, ys = jnp.asarray(x["h0"]), []
    step = jax.jit(lambda *a: ops.selective_scan_step(*a, signed=True))
    for t in range(T):
        y, h = step(x["u"][:, t], x["delta"][:, t], x["A"], x["Bm"][:, t], x["Cm"][:, t], h)
        ys.append(y)
    assert rel(np.stack(ys, 1), full) < TOL
    with pytest.raises(ValueError, match=r"h must have shape \[B, D, N\]"):
        ops.selective_scan_step(x["u"][:, 0], x["delta"][:, 0], x["A"], x["Bm"][:, 0],
                                x["Cm"][:, 0], np.zeros((2, 3), np.float32))


def test_is_linear_recurrence_then_readout():
    # the definition, through the public pieces: gates, linear_recurrence, contraction
    x = inputs()
    a, b = ops.selective_gates(x["u"], x["delta"], x["A"], x["Bm"], signed=True)
    B, _, D, N = a.shape
    h = ops.linear_recurrence(a.reshape(B, T, -1), b.reshape(B, T, -1),
                              x["h0"].reshape(B, -1), implementation="sequential")
    want = np.einsum("btdn,btn->btd", np.asarray(h).reshape(B, T, D, N), x["Cm"])
    got = ops.selective_scan(*(x[n] for n in NAMES), signed=True, implementation="pallas")
    assert rel(got, want) < TOL


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(u=np.zeros((2, 5))), ValueError, r"u must have shape \[B, T, D\]"),
        (dict(delta=np.zeros((2, 5, 4))), ValueError, "delta must have shape"),
        (dict(A=np.zeros((4, 2))), ValueError, r"A must have shape \[D, N\]"),
        (dict(Bm=np.zeros((2, 5, 3))), ValueError, r"Bm must have shape \[B, T, N\]"),
        (dict(Cm=np.zeros((2, 4, 2))), ValueError, r"Cm must have shape \[B, T, N\]"),
        (dict(h0=np.zeros((2, 3))), ValueError, r"h0 must have shape \[B, D, N\]"),
        (dict(u=np.zeros((2, 5, 3), np.int32)), TypeError, "u must be a floating"),
        (dict(chunk_size=0), ValueError, "chunk_size must be a positive int"),
        (dict(implementation="fused"), ValueError, "implementation must be one of"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(kw, err, match):
    args = dict(u=np.zeros((2, 5, 3), np.float32), delta=np.zeros((2, 5, 3), np.float32),
                A=np.zeros((3, 2), np.float32), Bm=np.zeros((2, 5, 2), np.float32),
                Cm=np.zeros((2, 5, 2), np.float32), h0=None)
    args.update(kw)
    pos = [args.pop(n) for n in NAMES]
    with pytest.raises(err, match=match):
        ops.selective_scan(*pos, **args)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_sequences(impl):
    z = lambda *s: np.zeros(s, np.float32)
    y = ops.selective_scan(z(2, 0, 3), z(2, 0, 3), z(3, 2), z(2, 0, 2), z(2, 0, 2), z(2, 3, 2),
                           implementation=impl)
    assert y.shape == (2, 0, 3) and y.dtype == jnp.float32


def test_float64_pallas_is_refused():
    x = inputs()
    with _compat.enable_x64():
        xs = [jnp.asarray(x[n], jnp.float64) for n in NAMES]
        with pytest.raises(TypeError, match="float32"):
            ops.selective_scan(*xs, implementation="pallas")


def test_kernel_channel_tiles_vmap_and_one_token():
    # several channel tiles per batch row (the cross-tile sums of dB and dC), under jax.vmap
    # (seed ensembles vmap whole models), and T = 1
    import pallas_kernels as pk

    x = inputs()
    xs = [jnp.asarray(x[n]) for n in NAMES]
    cot = jnp.asarray(np.random.default_rng(1).normal(size=x["u"].shape), jnp.float32)

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a) * cot)

    seq = lambda *a: ops.selective_scan(*a, signed=True, implementation="sequential")
    tiled = lambda *a: pk.selective_scan(*a, signed=True, block_d=2)  # D = 6: 3 tiles
    g_ref = jax.grad(loss(seq), range(6))(*xs)
    g = jax.jit(jax.grad(loss(tiled), range(6)))(*xs)
    for name, a, b in zip(NAMES, g, g_ref):
        assert rel(a, b) < TOL, name
    # vmap over a leading axis of 2 "seeds", A batched too
    xv = [jnp.stack([v, 0.5 * v]) for v in xs]
    yv = jax.jit(jax.vmap(tiled))(*xv)
    for i in range(2):
        assert rel(yv[i], seq(*(v[i] for v in xv))) < TOL
    gv = jax.jit(jax.vmap(jax.grad(loss(tiled), range(6))))(*xv)
    g1 = jax.grad(loss(seq), range(6))(*(v[1] for v in xv))
    for name, a, b in zip(NAMES, gv, g1):
        assert rel(a[1], b) < TOL, name
    one = [v[:, :1] if n in ("u", "delta", "Bm", "Cm") else v for n, v in zip(NAMES, xs)]
    assert rel(tiled(*one), seq(*one)) < TOL


def test_kernel_block_d_must_be_a_power_of_two():
    import pallas_kernels as pk

    x = inputs()
    with pytest.raises(ValueError, match="block_d must be a power of two"):
        pk.selective_scan(*(x[n] for n in NAMES), block_d=3)
