"""lrnn.nn.decay_mask: no weight decay on norms, biases and log / gate parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import lrnn


def _model():
    rngs = nnx.Rngs(0)
    return lrnn.nn.CausalLM(32, 16, [lrnn.nn.DeltaNet(16, 2, rngs=rngs),
                                     lrnn.nn.Diagonal(16, rngs=rngs)], rngs=rngs)


def _by_path(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_which_parameters_decay():
    mask = _by_path(lrnn.nn.decay_mask(nnx.state(_model(), nnx.Param)))
    decayed = {p for p, v in mask.items() if v}
    exempt = set(mask) - decayed
    for word in ("['bias']", "['scale']", "['A_log']", "['skip']"):
        assert any(word in p for p in exempt) and not any(word in p for p in decayed), word
    for word in ("['kernel']", "['embedding']", "['conv']['weight']"):
        assert any(word in p for p in decayed) and not any(word in p for p in exempt), word


def test_an_optimizer_with_the_mask_leaves_the_exempt_parameters_alone():
    model = _model()
    before = _by_path(nnx.state(model, nnx.Param))
    opt = nnx.Optimizer(model, optax.adamw(0.1, weight_decay=0.5, mask=lrnn.nn.decay_mask),
                        wrt=nnx.Param)
    zero = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    opt.update(model, zero)  # zero gradients: only the decay moves a parameter
    after = _by_path(nnx.state(model, nnx.Param))
    mask = _by_path(lrnn.nn.decay_mask(nnx.state(model, nnx.Param)))
    for p, v in after.items():
        moved = not bool(jnp.array_equal(v, before[p]))
        nonzero = bool(jnp.any(before[p] != 0))
        assert moved == (mask[p] and nonzero), p
