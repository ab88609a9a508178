"""Layers and models: recurrent step decoding equals the full sequence, for every mixer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrnn.nn import MIXERS, CausalConv1D, ModelConfig, SequenceModel, make_mixer

T = 11  # not a multiple of the chunk size below
CHUNK = 4
BASE = ModelConfig(d_model=16, layers=1, heads=2, d_state=2, conv=3, mlp_ratio=1,
                   chunk_size=CHUNK, slice_inputs=4, slice_state=8, block_size=4)

CASES = [
    ("diagonal", dict(eigen="unit")),
    ("diagonal", dict(eigen="signed", layers=2)),
    ("gla", dict(eigen="signed")),
    ("deltanet", dict(eigen="signed")),
    ("deltanet", dict(eigen="unit", forget_gate=True, conv=0)),
    ("deltaproduct", dict(eigen="signed", n_h=2, forget_gate=True)),
    ("slice", dict(structure="block_diagonal")),
    ("slice", dict(structure="walsh_hadamard")),
    ("slice", dict(structure="dplr")),
    ("slice", dict(structure="sparse")),
    ("lstm", {}),
    ("transformer", {}),
]


def _rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("mixer,kw", CASES, ids=[f"{m}-{'-'.join(map(str, k.values()))}"
                                                   for m, k in CASES])
def test_step_decoding_equals_full_sequence(mixer, kw):
    cfg = dataclasses.replace(BASE, mixer=mixer, implementation="sequential", **kw)
    model = SequenceModel(cfg, vocab_size=5, num_classes=3, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, T), 0, 5)
    full = jax.jit(lambda t: model(t))(tokens)
    assert full.shape == (2, T, 3) and full.dtype == jnp.float32

    @jax.jit
    def decode(tokens):
        def body(state, tok):
            logits, state = model.step(tok, state)
            return state, logits

        _, out = jax.lax.scan(body, model.init_state(2, T), tokens.T)
        return jnp.swapaxes(out, 0, 1)

    assert _rel(decode(tokens), full) < 1e-5


def test_implementations_agree_with_gradients():
    # The ops are tested implementation by implementation in tests/test_ops*.py; here the
    # model-level plumbing of ``implementation=`` (diagonal mixer, one block).
    cfg = dataclasses.replace(BASE, mixer="diagonal", eigen="signed", layers=1, mlp_ratio=0)
    tokens = jax.random.randint(jax.random.key(2), (2, T), 0, 5)
    outs, grads = {}, {}
    for impl in ("sequential", "chunked", "pallas"):  # pallas: the fused selective scan
        model = SequenceModel(dataclasses.replace(cfg, implementation=impl), 5, 3,
                              rngs=nnx.Rngs(0))
        gdef, params = nnx.split(model, nnx.Param)
        f = lambda p, gdef=gdef: jnp.sum(nnx.merge(gdef, p)(tokens) ** 2)
        outs[impl], g = jax.jit(jax.value_and_grad(f))(params)
        grads[impl] = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
    assert _rel(outs["chunked"], outs["sequential"]) < 1e-5
    assert _rel(grads["chunked"], grads["sequential"]) < 1e-4
    assert _rel(outs["pallas"], outs["sequential"]) < 1e-5
    assert _rel(grads["pallas"], grads["sequential"]) < 1e-4


def test_eigenvalue_ranges():
    x = jax.random.normal(jax.random.key(0), (2, 7, 16)) * 3
    for mixer in ("diagonal", "deltanet", "gla"):
        for eigen, lo in (("unit", 0.0), ("signed", -1.0)):
            m = make_mixer(dataclasses.replace(BASE, mixer=mixer, eigen=eigen), rngs=nnx.Rngs(1))
            ev = np.asarray(jax.jit(lambda x, m=m: m.eigenvalues(x))(x))
            assert ev.min() >= lo and ev.max() <= 1.0
            if eigen == "signed" and mixer != "gla":  # gla gates start near 1
                assert ev.min() < 0.0, mixer


def test_model_eigenvalues_per_layer():
    cfg = dataclasses.replace(BASE, mixer="diagonal", expand=1, layers=2)
    model = SequenceModel(cfg, 3, 2, rngs=nnx.Rngs(0))
    ev = jax.jit(lambda t: model.eigenvalues(t))(jnp.zeros((1, 5), jnp.int32))
    assert len(ev) == 2 and ev[0].shape == (1, 5, 16, 2)


def test_bf16_compute_close_to_f32():
    cfg = dataclasses.replace(BASE, mixer="deltanet", implementation="sequential", layers=1)
    tokens = jax.random.randint(jax.random.key(1), (2, T), 0, 5)
    ref = SequenceModel(cfg, 5, 3, rngs=nnx.Rngs(0))
    low = SequenceModel(dataclasses.replace(cfg, dtype="bfloat16"), 5, 3, rngs=nnx.Rngs(0))
    ref, out = (jax.jit(lambda t, m=m: m(t))(tokens) for m in (ref, low))
    assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
    assert _rel(out, ref) < 5e-2


def test_causal_conv_step():
    conv = CausalConv1D(3, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 6, 3))
    full = conv(x)
    state, outs = conv.init_state(2), []
    for t in range(6):
        y, state = conv.step(x[:, t], state)
        outs.append(y)
    assert _rel(jnp.stack(outs, 1), full) < 1e-6
    # causal: changing a later input leaves earlier outputs alone
    x2 = x.at[:, 4].add(1.0)
    np.testing.assert_array_equal(np.asarray(conv(x2)[:, :4]), np.asarray(full[:, :4]))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="valid mixers: .*deltanet"):
        make_mixer(dataclasses.replace(BASE, mixer="mamba9"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="n_h"):
        make_mixer(dataclasses.replace(BASE, mixer="deltanet", n_h=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by heads"):
        make_mixer(dataclasses.replace(BASE, mixer="gla", heads=3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="eigen"):
        make_mixer(dataclasses.replace(BASE, mixer="diagonal", eigen="neg"), rngs=nnx.Rngs(0))
    assert {"diagonal", "gla", "deltanet", "deltaproduct", "slice", "lstm",
            "transformer"} <= set(MIXERS)
