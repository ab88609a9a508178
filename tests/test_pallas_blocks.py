"""Every BlockSpec the Pallas wrappers build for TPU obeys the TPU tiling rules.

No TPU is at hand, so the wrappers are traced (`jax.eval_shape`, nothing runs) with
`_target="tpu"`, every `(array_shape, block_shape)` is recorded, and the last two block dims
must be multiples of (8, 128) or the full array extent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels as pk
from pallas_kernels import _common as cm

S = jax.ShapeDtypeStruct


def _grad_trace(fn, *shapes):
    """Traces forward and backward (both kernels) without running anything."""
    def loss(*xs):
        out = fn(*xs)
        leaves = jax.tree.leaves(out)
        return sum(jnp.sum(x.astype(jnp.float32)) for x in leaves)

    jax.eval_shape(jax.grad(loss, range(len(shapes))), *shapes)


CASES = {
    "linear_recurrence": lambda: _grad_trace(
        lambda a, b, h0: pk.linear_recurrence(a, b, h0, interpret=False, _target="tpu"),
        S((2, 4096, 2048), jnp.float32), S((2, 4096, 2048), jnp.float32),
        S((2, 2048), jnp.float32)),
    "gla": lambda: _grad_trace(
        lambda q, k, v, g: pk.gated_linear_attention(q, k, v, g, interpret=False,
                                                     split_intra=True, _target="tpu"),
        S((2, 1000, 4, 128), jnp.bfloat16), S((2, 1000, 4, 128), jnp.bfloat16),
        S((2, 1000, 4, 128), jnp.bfloat16), S((2, 1000, 4, 128), jnp.float32)),
    "gla_chunk_parallel": lambda: _grad_trace(
        lambda q, k, v, g: pk.gated_linear_attention(q, k, v, g, interpret=False,
                                                     chunk_parallel=True, _target="tpu"),
        S((2, 1000, 4, 128), jnp.bfloat16), S((2, 1000, 4, 128), jnp.bfloat16),
        S((2, 1000, 4, 128), jnp.bfloat16), S((2, 1000, 4, 128), jnp.float32)),
    "delta_product": lambda: _grad_trace(
        lambda q, k, v, b, g: pk.delta_product(q, k, v, b, gate=g, interpret=False,
                                               precompute_inverse=True, _target="tpu"),
        S((2, 1000, 4, 128), jnp.bfloat16), S((2, 1000, 4, 2, 128), jnp.bfloat16),
        S((2, 1000, 4, 2, 128), jnp.bfloat16), S((2, 1000, 4, 2), jnp.float32),
        S((2, 1000, 4), jnp.float32)),
    "delta_product_chunk_parallel": lambda: _grad_trace(
        lambda q, k, v, b, g: pk.delta_product(q, k, v, b, gate=g, interpret=False,
                                               chunk_parallel=True, _target="tpu"),
        S((2, 1000, 4, 128), jnp.bfloat16), S((2, 1000, 4, 2, 128), jnp.bfloat16),
        S((2, 1000, 4, 2, 128), jnp.bfloat16), S((2, 1000, 4, 2), jnp.float32),
        S((2, 1000, 4), jnp.float32)),
    "delta_rule": lambda: _grad_trace(
        lambda q, k, v, b: pk.delta_product(q, k, v, b, interpret=False, _target="tpu"),
        S((2, 777, 4, 128), jnp.float32), S((2, 777, 4, 1, 128), jnp.float32),
        S((2, 777, 4, 1, 128), jnp.float32), S((2, 777, 4, 1), jnp.float32)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tpu_block_shapes(name):
    with cm.record_block_shapes() as rec:
        CASES[name]()
    assert len(rec) >= 4, "expected the forward and backward kernels to be traced"
    bad = [(a, b) for a, b in rec if not cm.tpu_block_ok(a, b)]
    assert not bad, f"TPU-illegal blocks (array, block): {bad}"


def test_rule_itself():
    assert cm.tpu_block_ok((4, 64, 256), (None, 64, 128))
    assert cm.tpu_block_ok((4, 64, 100), (None, 64, 100))
    assert not cm.tpu_block_ok((4, 64, 256), (None, 64, 64))
    assert not cm.tpu_block_ok((4, 64, 256), (None, 4, 128))
    assert not cm.tpu_block_ok((4, 8, 256), (4, None, 256))
