"""lrnn.ops.delta_product / delta_rule: every implementation vs a float64 NumPy loop.

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
# (op, T, chunk_size, n_h, gated): lengths not multiples of the chunk, n_h in {1, 2, 3}
CASES = [
    ("delta_product", 1, 16, 1, True),
    ("delta_product", 37, 16, 2, True),
    ("delta_product", 70, 16, 3, False),
    ("delta_product", 129, 64, 2, True),
    ("delta_rule", 37, 16, 1, True),
]
SCALE = 0.5
TOL = 2e-5  # float32; observed errors are <= 1e-6


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


@functools.cache
def inputs(op, T, n_h, gated):
    x = random_inputs(op, batch=2, length=T, heads=2, dk=8, dv=4, n_h=n_h,
                      gate="head" if gated else "none", gate_low=0.0, negative=0.4, seed=T)
    b = x["beta"].reshape(-1)
    b[::7], b[1::11] = 2.0, 0.0  # exact reflections and identity steps
    if gated:
        g = x["gate"].reshape(-1)
        g[3::17], g[5::19], g[7::23], g[11::29], g[13::31] = 0.0, 1e-7, 1.0, -1.0, 0.999999
    return {k: v.astype(np.float32) for k, v in x.items()}


def _call(op, x, **kw):
    return getattr(ops, op)(x["q"], x["k"], x["v"], x["beta"], gate=x.get("gate"),
                            initial_state=x["initial_state"], scale=SCALE, **kw)


@functools.cache
def run(impl, op, T, chunk, n_h, gated):
    """Forward only: (o, final_state)."""
    x = inputs(op, T, n_h, gated)
    fn = jax.jit(functools.partial(_call, op, chunk_size=chunk, implementation=impl))
    return tuple(np.asarray(y) for y in fn(x))


@functools.cache
def run_grad(impl, op, T, chunk, n_h, gated):
    """Gradients of every input of a fixed random linear function of (o, final_state)."""
    x = inputs(op, T, n_h, gated)
    rng = np.random.default_rng(1000 + T)
    co = rng.normal(size=x["q"].shape[:3] + x["v"].shape[-1:]).astype(np.float32)
    cS = rng.normal(size=x["initial_state"].shape).astype(np.float32)

    def loss(x):
        o, S = _call(op, x, chunk_size=chunk, implementation=impl)
        return jnp.sum(o * co) + jnp.sum(S * cS)

    return {k: np.asarray(v) for k, v in jax.jit(jax.grad(loss))(x).items()}


def _reference(op, x):
    fn = ref.delta_product if op == "delta_product" else ref.delta_rule
    return fn(x["q"], x["k"], x["v"], x["beta"], x.get("gate"), x["initial_state"], SCALE)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_matches_float64_loop(impl, case):
    op, T, chunk, n_h, gated = case
    x = inputs(op, T, n_h, gated)
    o, S = run(impl, *case)
    ro, rS = _reference(op, x)
    assert o.shape == ro.shape and S.shape == rS.shape
    assert rel(o, ro) < TOL
    assert rel(S, rS) < TOL


# Gradients cost ~3x a forward compile. The default run checks the chunked form on a gated
# n_h = 2 and an ungated n_h = 3 case and the scan form on the first (lrnn.scan's own
# gradients are tested in tests/test_monoid.py); the rest run with -m slow.
_slow = pytest.mark.slow
GRAD_PARAMS = [
    ("chunked", CASES[1]),
    ("chunked", CASES[2]),
    ("scan", CASES[1]),
    pytest.param("scan", CASES[2], marks=_slow),
    pytest.param("chunked", CASES[3], marks=_slow),
    pytest.param("scan", CASES[3], marks=_slow),
    pytest.param("chunked", CASES[4], marks=_slow),
    pytest.param("scan", CASES[4], marks=_slow),
]


@pytest.mark.parametrize("impl, case", GRAD_PARAMS, ids=str)
def test_gradients_match_sequential(impl, case):
    g = run_grad(impl, *case)
    g_ref = run_grad("sequential", *case)
    want = {"q", "k", "v", "beta", "initial_state"} | ({"gate"} if case[-1] else set())
    assert set(g) == want
    for name in g:
        assert np.all(np.isfinite(g[name])), name
        assert rel(g[name], g_ref[name]) < TOL, name


def test_reference_is_a_product_of_householder_maps():
    # The NumPy loop itself, on one head and token: S1 = H2 H1 (g S0) + ...
    rng = np.random.default_rng(0)
    dk, dv = 3, 2
    k = rng.normal(size=(1, 1, 1, 2, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v, beta, S0 = rng.normal(size=(1, 1, 1, 2, dv)), np.array([[[[1.5, 2.0]]]]), rng.normal(
        size=(1, 1, dk, dv))
    g = np.array([[[-0.7]]])
    H = [np.eye(dk) - beta[0, 0, 0, j] * np.outer(k[0, 0, 0, j], k[0, 0, 0, j]) for j in (0, 1)]
    S = H[1] @ (H[0] @ (-0.7 * S0[0, 0]) + 1.5 * np.outer(k[0, 0, 0, 0], v[0, 0, 0, 0]))
    S += 2.0 * np.outer(k[0, 0, 0, 1], v[0, 0, 0, 1])
    _, S_ref = ref.delta_product(np.ones((1, 1, 1, dk)), k, v, beta, g, S0)
    np.testing.assert_allclose(S_ref[0, 0], S, rtol=1e-12)
    # beta = 2 is a reflection: eigenvalue -1 along k
    np.testing.assert_allclose(H[1] @ k[0, 0, 0, 1], -k[0, 0, 0, 1], rtol=1e-12)


@pytest.mark.parametrize("op", ["delta_product", "delta_rule"])
def test_steps_equal_the_sequence(op):
    case = next(c for c in CASES if c[0] == op and c[1] == 37)
    _, T, chunk, n_h, gated = case
    x = inputs(op, T, n_h, gated)
    o_full, S_full = run("chunked", *case)
    step = jax.jit(functools.partial(getattr(ops, f"{op}_step"), scale=SCALE))
    S = jnp.asarray(x["initial_state"])
    outs = []
    for t in range(T):
        o, S = step(x["q"][:, t], x["k"][:, t], x["v"][:, t], x["beta"][:, t],
                    gate=x["gate"][:, t], state=S)
        outs.append(o)
    assert S.dtype == jnp.float32
    assert rel(np.stack(outs, 1), o_full) < TOL
    assert rel(S, S_full) < TOL


def test_chunk_combine_scan_and_no_initial_state():
    op, T, chunk, n_h = "delta_product", 70, 16, 3
    x = dict(inputs(op, T, n_h, False))
    x["initial_state"] = None
    fn = jax.jit(functools.partial(ops.delta_product, chunk_size=chunk, chunk_combine="scan",
                                   implementation="chunked"))
    o, S = fn(x["q"], x["k"], x["v"], x["beta"])
    ro, rS = ref.delta_product(x["q"], x["k"], x["v"], x["beta"])
    assert rel(o, ro) < TOL and rel(S, rS) < TOL


def test_bfloat16_inputs_accumulate_in_float32():
    op, T, chunk, n_h = "delta_product", 70, 16, 2
    x = {k: jnp.asarray(v, jnp.bfloat16) for k, v in inputs(op, T, n_h, True).items()}
    o, S = jax.jit(functools.partial(_call, op, chunk_size=chunk, implementation="chunked"))(x)
    assert o.dtype == jnp.bfloat16 and S.dtype == jnp.float32
    ro, rS = _reference(op, {k: np.asarray(v, np.float32) for k, v in x.items()})
    # same bf16-rounded inputs in the reference: the f32 state is exact to ~1e-6, the output
    # carries bf16's rounding (2^-9 relative)
    assert rel(S, rS) < 1e-5
    assert rel(o.astype(jnp.float32), ro) < 5e-3


def _bad(**over):
    x = dict(q=jnp.zeros((2, 5, 2, 8)), k=jnp.zeros((2, 5, 2, 3, 8)),
             v=jnp.zeros((2, 5, 2, 3, 4)), beta=jnp.ones((2, 5, 2, 3)))
    kw = {k: over.pop(k) for k in list(over) if k not in x}
    x.update(over)
    return lambda: ops.delta_product(x["q"], x["k"], x["v"], x["beta"], **kw)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (_bad(k=jnp.zeros((2, 5, 2, 8))), ValueError, r"k must have shape \[B, T, H, n_h, dk\]"),
        (_bad(q=jnp.zeros((2, 5, 2, 7))), ValueError, "q and k must share the key size dk"),
        (_bad(v=jnp.zeros((2, 5, 2, 2, 4))), ValueError, "v must have shape"),
        (_bad(beta=jnp.ones((2, 5, 2))), ValueError, r"beta must have shape \[B, T, H, n_h\]"),
        (_bad(gate=jnp.ones((2, 5, 2, 8))), ValueError, r"gate must have shape \[B, T, H\]"),
        (_bad(beta=jnp.ones((2, 5, 2, 3), jnp.int32)), TypeError, "beta must be a floating"),
        (_bad(initial_state=jnp.zeros((2, 2, 4, 8))), ValueError, "initial_state must have"),
        (_bad(chunk_size=-1), ValueError, "chunk_size must be a positive int"),
        (_bad(chunk_size=True), ValueError, "chunk_size must be a positive int"),
        (_bad(implementation="xla"), ValueError, r"implementation must be one of .*sequential"),
        (lambda: ops.delta_rule(jnp.zeros((2, 5, 2, 8)), jnp.zeros((2, 5, 2, 1, 8)),
                                jnp.zeros((2, 5, 2, 4)), jnp.ones((2, 5, 2))),
         ValueError, r"delta_rule: k must have shape \[B, T, H, dk\]"),
        (lambda: ops.delta_rule_step(jnp.zeros((2, 2, 8)), jnp.zeros((2, 2, 8)),
                                     jnp.zeros((2, 2, 4)), jnp.ones((2, 3))),
         ValueError, r"beta must have shape \[B, H\]"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()
