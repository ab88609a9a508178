"""lrnn.nn.CausalLM: greedy ``generate`` (prefill, then step) equals the argmax of repeated
full calls on the growing sequence; the fallback for layers without ``step``; sampling is
reproducible; bad arguments raise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lrnn
from lrnn.nn import AttentionMixer, ModelConfig

V, D, B, P, STEPS = 13, 16, 2, 3, 4  # P, P + STEPS: not multiples of the chunk (4)
COMMON = dict(chunk_size=4, implementation="chunked")


def hybrid(seed=0):
    """DeltaNet + GLA."""
    r = nnx.Rngs(seed)
    mixers = [lrnn.nn.DeltaNet(D, 2, conv=3, **COMMON, rngs=r), lrnn.nn.GLA(D, 2, **COMMON, rngs=r)]
    return lrnn.nn.CausalLM(V, D, mixers, rngs=r)


def diagonal(seed=0):
    r = nnx.Rngs(seed)
    return lrnn.nn.CausalLM(V, D, [lrnn.nn.Diagonal(D, d_state=2, conv=3, **COMMON, rngs=r)],
                            mlp_ratio=0, rngs=r)


def with_attention(seed=0):
    """GLA + softmax attention (no state=, so generate falls back to full calls)."""
    r = nnx.Rngs(seed)
    attn = AttentionMixer(ModelConfig(d_model=D, heads=2), rngs=r)
    return lrnn.nn.CausalLM(V, D, [lrnn.nn.GLA(D, 2, **COMMON, rngs=r), attn], mlp_ratio=0,
                            rngs=r)


MODELS = {"deltanet+gla": hybrid, "diagonal": diagonal, "gla+attention": with_attention}


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30)


def prompt(seed=1):
    return jax.random.randint(jax.random.key(seed), (B, P), 0, V)


def greedy_reference(model, tokens, steps):
    """Argmax of a full call on the growing sequence, one token at a time."""
    call = jax.jit(lambda t: model(t)[:, -1])
    for _ in range(steps):
        nxt = jnp.argmax(call(tokens), axis=-1).astype(tokens.dtype)
        tokens = jnp.concatenate([tokens, nxt[:, None]], axis=1)
    return tokens


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_generate_equals_repeated_full_calls(name):
    model = MODELS[name]()
    assert model.decodes == (name != "gla+attention")
    x = prompt()
    out = model.generate(x, STEPS)
    assert out.shape == (B, P + STEPS) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :P], x)
    np.testing.assert_array_equal(out, greedy_reference(model, x, STEPS))
    assert model.generate(x, 0).shape == (B, P)


@pytest.mark.parametrize("name", ["deltanet+gla", "diagonal"])
def test_prefill_then_step_logits_equal_full_call(name):
    model = MODELS[name]()
    seq = jax.random.randint(jax.random.key(2), (B, P + 3), 0, V)

    @jax.jit
    def go(seq):
        full = model(seq)
        head, state = model(seq[:, :P], return_state=True)
        tail = []
        for t in range(P, seq.shape[1]):
            logits, state = model.step(seq[:, t], state)
            tail.append(logits)
        zero = model(seq, state=model.init_state(B))
        return full, jnp.concatenate([head, jnp.stack(tail, 1)], 1), zero

    full, decoded, zero = go(seq)
    assert full.shape == (B, P + 3, V) and full.dtype == jnp.float32
    assert rel(decoded, full) < 1e-5
    assert rel(zero, full) < 1e-5


def test_sampling_is_reproducible_and_valid():
    model = hybrid()
    x = prompt()
    a = model.generate(x, STEPS, key=jax.random.key(3), temperature=1.0)
    b = model.generate(x, STEPS, key=jax.random.key(3), temperature=1.0)
    c = model.generate(x, STEPS, key=jax.random.key(4), temperature=5.0)
    np.testing.assert_array_equal(a, b)
    for out in (a, c):
        assert out.shape == (B, P + STEPS) and out.dtype == jnp.int32
        np.testing.assert_array_equal(out[:, :P], x)
        assert int(out.min()) >= 0 and int(out.max()) < V
    assert not np.array_equal(a, c)  # 8 tokens from 13 ids at temperature 5


def test_bad_arguments():
    model = diagonal()
    x = prompt()
    with pytest.raises(ValueError, match="steps must be >= 0"):
        model.generate(x, -1)
    with pytest.raises(TypeError, match="steps must be an int"):
        model.generate(x, 2.0)
    with pytest.raises(TypeError, match="prompt must hold integer token ids"):
        model.generate(x.astype(jnp.float32), 2)
    with pytest.raises(ValueError, match=r"prompt must be \[B, T\]"):
        model.generate(x[0], 2)
    with pytest.raises(ValueError, match="P >= 1"):
        model.generate(x[:, :0], 2)
    with pytest.raises(ValueError, match=r"prompt ids must be in \[0, 13\)"):
        model.generate(x.at[0, 0].set(V), 2)
    with pytest.raises(ValueError, match="temperature must be finite and >= 0"):
        model.generate(x, 2, key=jax.random.key(0), temperature=-1.0)
    with pytest.raises(ValueError, match="needs key="):
        model.generate(x, 2, temperature=1.0)
    r = nnx.Rngs(0)
    with pytest.raises(ValueError, match="mixers is empty"):
        lrnn.nn.CausalLM(V, D, [], rngs=r)
    with pytest.raises(TypeError, match="is the class GLA"):
        lrnn.nn.CausalLM(V, D, [lrnn.nn.GLA], rngs=r)
    gla = lrnn.nn.GLA(D, 2, rngs=r)
    with pytest.raises(ValueError, match="separate layer per block"):
        lrnn.nn.CausalLM(V, D, [gla, gla], rngs=r)
    with pytest.raises(ValueError, match="d_model=8"):
        lrnn.nn.CausalLM(V, D, [lrnn.nn.GLA(8, 2, rngs=r)], rngs=r)
    with pytest.raises(ValueError, match="AttentionMixer has not"):
        with_attention().init_state(B)
