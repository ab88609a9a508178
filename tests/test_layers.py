"""The public layers (lrnn.nn.DeltaNet, GLA, Diagonal, SLiCE, PLSTM2D): prefill with the
chunked form, then ``step`` over the rest, equals the full call; states round-trip."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrnn
from lrnn.nn import ModelConfig

T, PREFILL, B, D = 23, 11, 2, 16  # T and PREFILL: not multiples of the chunk size
CHUNK = 4
COMMON = dict(chunk_size=CHUNK, implementation="chunked")
SMALL = ModelConfig(d_model=D, heads=2, d_state=2, conv=3, slice_state=8, slice_inputs=4,
                    **COMMON)

# (id, class name, keyword arguments after d_model, the ModelConfig fields that give them)
CASES = [
    ("deltanet", "DeltaNet", dict(heads=2, conv=3), dict()),
    ("deltanet-unit-noconv-gated", "DeltaNet", dict(heads=2, eigen="unit", conv=0,
                                                    forget_gate=True),
     dict(eigen="unit", conv=0, forget_gate=True)),
    ("deltaproduct-nh2-gated", "DeltaNet", dict(heads=2, n_h=2, conv=3, forget_gate=True),
     dict(n_h=2, forget_gate=True)),
    ("deltaproduct-nh3-headdim", "DeltaNet", dict(heads=2, n_h=3, conv=2, head_dim=4,
                                                  out_gate=False),
     dict(n_h=3, conv=2, head_dim=4, out_gate=False)),
    ("gla", "GLA", dict(heads=2), dict()),
    ("gla-unit", "GLA", dict(heads=4, eigen="unit"), dict(heads=4, eigen="unit")),
    ("diagonal", "Diagonal", dict(d_state=2, conv=3), dict()),
    ("diagonal-unit-noconv", "Diagonal", dict(d_state=3, expand=2, eigen="unit", conv=0),
     dict(d_state=3, expand=2, eigen="unit", conv=0)),
    ("slice-block_diagonal", "SLiCE", dict(structure="block_diagonal", state_size=8, d_in=4),
     dict(structure="block_diagonal")),
    ("slice-walsh_hadamard", "SLiCE", dict(structure="walsh_hadamard", state_size=8, d_in=4),
     dict(structure="walsh_hadamard")),
    ("slice-dplr-linear", "SLiCE", dict(structure="dplr", state_size=8, d_in=4,
                                        drive="linear"),
     dict(structure="dplr", slice_drive="linear")),
]


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30)


def tree_rel(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return max(rel(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def build(cls_name, kw, seed=0):
    kw = dict(kw)
    heads = kw.pop("heads", None)
    args = (D,) if heads is None else (D, heads)
    return getattr(lrnn.nn, cls_name)(*args, **kw, **COMMON, rngs=nnx.Rngs(seed))


def run_steps(layer, xs, state):
    """Steps over ``xs [B, t, D]`` from ``state``: (y [B, t, D], final state)."""

    def body(s, x_t):
        y_t, s = layer.step(x_t, s)
        return s, y_t

    state, ys = jax.lax.scan(body, state, jnp.swapaxes(xs, 0, 1))
    return jnp.swapaxes(ys, 0, 1), state


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_prefill_then_step_equals_full_call(case):
    _, cls_name, kw, _ = case
    layer = build(cls_name, kw)
    x = jax.random.normal(jax.random.key(1), (B, T, D))

    @jax.jit
    def go(x):
        full, final = layer(x, return_state=True)
        plain = layer(x)
        y1, s1 = layer(x[:, :PREFILL], return_state=True)  # prefill, chunked
        y2, s2 = run_steps(layer, x[:, PREFILL:], s1)  # decode the rest
        resumed = layer(x[:, PREFILL:], state=s1)  # chunked again, from the prefill's state
        y0, s0 = run_steps(layer, x, layer.init_state(B))  # from scratch
        return full, final, plain, jnp.concatenate([y1, y2], 1), s2, resumed, y0, s0

    full, final, plain, decoded, s_decoded, resumed, stepped, s_stepped = go(x)
    assert full.shape == (B, T, D) and full.dtype == jnp.float32
    assert rel(plain, full) == 0
    assert rel(decoded, full) < 1e-5
    assert rel(resumed, full[:, PREFILL:]) < 1e-5
    assert rel(stepped, full) < 1e-5
    # the final state of return_state equals the state after stepping (same pytree)
    assert jax.tree.structure(final) == jax.tree.structure(layer.init_state(B))
    assert tree_rel(final, s_stepped) < 1e-5
    assert tree_rel(final, s_decoded) < 1e-5
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(final))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_from_config_builds_the_same_layer(case):
    _, cls_name, kw, fields = case
    cls = getattr(lrnn.nn, cls_name)
    a = cls.from_config(dataclasses.replace(SMALL, **fields), rngs=nnx.Rngs(0))
    b = build(cls_name, kw)
    assert type(a) is cls
    pa, pb = nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)
    assert jax.tree.structure(pa) == jax.tree.structure(pb)
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))


def test_state_contents():
    dn = build("DeltaNet", dict(heads=2, n_h=2, conv=3))
    s = dn.init_state(B)
    assert s["S"].shape == (B, 2, 8, 8)
    assert [c.shape for c in s["conv"]] == [(B, 2, 16), (B, 2, 32), (B, 2, 32)]
    assert set(build("DeltaNet", dict(heads=2, conv=0)).init_state(B)) == {"S"}
    dg = build("Diagonal", dict(d_state=2, expand=2, conv=4)).init_state(B)
    assert dg["h"].shape == (B, 32, 2) and dg["conv"].shape == (B, 3, 32)
    assert build("GLA", dict(heads=2)).init_state(B)["S"].shape == (B, 2, 8, 8)
    assert build("SLiCE", dict(state_size=8, d_in=4)).init_state(B)["h"].shape == (B, 8)


def test_short_prefill_keeps_the_conv_history():
    # a prefill shorter than the conv's history (1 token, K - 1 = 3) and an empty one
    layer = build("DeltaNet", dict(heads=2, conv=4))
    x = jax.random.normal(jax.random.key(2), (B, 6, D))
    full = layer(x)
    _, s = layer(x[:, :1], return_state=True)
    assert rel(layer(x[:, 1:], state=s), full[:, 1:]) < 1e-5
    _, s0 = layer(x[:, :0], state=layer.init_state(B), return_state=True)
    assert tree_rel(s0, layer.init_state(B)) == 0


def test_keyword_errors_name_the_layer_and_keyword():
    with pytest.raises(ValueError, match="DeltaNet: n_h must be >= 1, got 0"):
        build("DeltaNet", dict(heads=2, n_h=0))
    with pytest.raises(ValueError, match="SLiCE: state_size must be >= 1"):
        build("SLiCE", dict(state_size=-1))
    with pytest.raises(ValueError, match="GLA: eigen must be 'unit' or 'signed'"):
        build("GLA", dict(heads=2, eigen="complex"))
    with pytest.raises(TypeError, match="from_config: cfg must be an lrnn.nn.ModelConfig"):
        lrnn.nn.GLA.from_config({"d_model": 16}, rngs=nnx.Rngs(0))


def test_plstm2d_from_config_and_no_state():
    cfg = ModelConfig(d_model=D, heads=4, implementation="scan")
    a = lrnn.nn.PLSTM2D.from_config(cfg, rngs=nnx.Rngs(0), mode="D")
    b = lrnn.nn.PLSTM2D(D, 4, mode="D", implementation="scan", rngs=nnx.Rngs(0))
    assert type(a) is lrnn.nn.PLSTM2D and a.mode == "D"
    pa, pb = jax.tree.leaves(nnx.state(a, nnx.Param)), jax.tree.leaves(nnx.state(b, nnx.Param))
    assert all(np.array_equal(u, v) for u, v in zip(pa, pb))
    x = jnp.ones((1, 2, 3, D))
    with pytest.raises(NotImplementedError, match="no causal order"):
        a(x, return_state=True)


def test_nn_is_lazy_attribute_of_lrnn():
    code = ("import sys, lrnn; assert 'lrnn.nn' not in sys.modules and 'flax' not in "
            "sys.modules; assert lrnn.nn.DeltaNet.__name__ == 'DeltaNet'; assert 'nn' in dir(lrnn)")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_state_needs_an_unsharded_call():
    layer = build("GLA", dict(heads=2))
    with lrnn.parallel.sequence_axis("seq", "all_gather"), pytest.raises(
            NotImplementedError, match="only outside sequence sharding"):
        layer(jnp.ones((1, 4, D)), return_state=True)
