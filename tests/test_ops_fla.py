"""lrnn.ops.fla: fla's signatures and conventions, against float64 NumPy token loops.

The loops below are written from fla's documented semantics (log-space decays, ``scale=None``
meaning ``K ** -0.5``, states ``[B, H, K, V]``), independently of lrnn's own references.
Outputs and final states are compared forward; gradients (of a random projection of o and
the final state) against central differences of the float64 loops along random directions.
The last test runs fla itself on a GPU (marker ``gpu``) on the same inputs.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrnn.ops import fla

B, H, K, V = 2, 2, 8, 4
TOL = 2e-5  # float32 vs the float64 loop
GRAD_TOL = 1e-4  # float32 gradients vs float64 central differences
BF16_TOL = 3e-2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / np.linalg.norm(y)


# ------------------------------------------------------------------------------------------
# float64 token loops from fla's documented semantics (state S [B, H, K, V])
# ------------------------------------------------------------------------------------------
def loop_delta(q, k, v, beta, g, scale, h0):
    """Gated delta rule: ``S <- exp(g_t) S; S <- S + k (beta (v - S^T k))^T; o = S^T q s``.

    g None: the plain delta rule."""
    q, k, v, beta = (np.asarray(x, np.float64) for x in (q, k, v, beta))
    T = k.shape[1]
    S = np.zeros(k.shape[:1] + k.shape[2:] + v.shape[-1:]) if h0 is None else np.array(h0, float)
    o = np.zeros(v.shape)
    for t in range(T):
        if g is not None:
            S = S * np.exp(np.asarray(g, np.float64)[:, t])[..., None, None]
        kt = k[:, t]
        u = beta[:, t, :, None] * (v[:, t] - np.einsum("bhk,bhkv->bhv", kt, S))
        S = S + kt[..., :, None] * u[..., None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return o, S


def loop_gla(q, k, v, g, scale, h0):
    """GLA: ``S <- exp(g_t) S + k v^T`` (g ``[B, T, H]`` per head or ``[B, T, H, K]`` per
    key); ``o = S^T q s``."""
    q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, g))
    S = np.zeros(k.shape[:1] + k.shape[2:] + v.shape[-1:]) if h0 is None else np.array(h0, float)
    o = np.zeros(v.shape)
    for t in range(k.shape[1]):
        a = np.exp(g[:, t])
        a = a[..., None, None] if a.ndim == 2 else a[..., :, None]
        S = a * S + k[:, t, ..., :, None] * v[:, t, ..., None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return o, S


def l2norm(x):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)


def softplus(x):
    return np.logaddexp(0.0, x)


# ------------------------------------------------------------------------------------------
# one spec per fla function: its tensor arguments and the loop that defines it
# ------------------------------------------------------------------------------------------
def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@functools.cache
def tensors(name, T, seed=0):
    """The tensor arguments (float32), in fla's positional order, and h0 [B, H, K, V]."""
    r = np.random.default_rng(seed + 7 * T)
    q = r.normal(size=(B, T, H, K))
    k = r.normal(size=(B, T, H, K))
    v = r.normal(size=(B, T, H, V))
    beta = r.uniform(0, 2, (B, T, H))  # [1, 2]: negative eigenvalues
    g_head = -r.uniform(0, 1, (B, T, H)) * (r.uniform(size=(B, T, H)) > 0.1)  # some 0 decays
    g_key = np.log(r.uniform(0.05, 1, (B, T, H, K)))
    args = {
        "chunk_delta_rule": (q, _unit(k), v, beta),
        "fused_recurrent_delta_rule": (q, _unit(k), v, beta),
        "chunk_gated_delta_rule": (q, _unit(k), v, g_head, beta),
        "chunk_gla": (q, k, v, g_key),
        "chunk_simple_gla": (q, k, v, g_head),
    }[name]
    h0 = r.normal(size=(B, H, K, V))
    return tuple(x.astype(np.float32) for x in args), h0.astype(np.float32)


def loop(name, args, scale, h0):
    if scale is None:
        scale = args[0].shape[-1] ** -0.5
    if name in ("chunk_delta_rule", "fused_recurrent_delta_rule"):
        q, k, v, beta = args
        return loop_delta(q, k, v, beta, None, scale, h0)
    if name == "chunk_gated_delta_rule":
        q, k, v, g, beta = args
        return loop_delta(q, k, v, beta, g, scale, h0)
    return loop_gla(*args, scale, h0)


NAMES = ("chunk_delta_rule", "fused_recurrent_delta_rule", "chunk_gated_delta_rule",
         "chunk_gla", "chunk_simple_gla")
# (T, implementation, chunk_size, scale, initial state, output_final_state)
CASES = [
    (37, "chunked", 16, None, True, True),
    (37, "sequential", None, 0.3, False, True),
    (1, "auto", None, None, True, False),
]


@functools.cache
def _fn(name, impl, chunk, scale, ofs):
    f = getattr(fla, name)
    return jax.jit(lambda args, h0: f(*args, scale=scale, initial_state=h0,
                                      output_final_state=ofs, chunk_size=chunk,
                                      implementation=impl))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T,impl,chunk,scale,with_h0,ofs", CASES)
def test_forward(name, T, impl, chunk, scale, with_h0, ofs):
    args, h0 = tensors(name, T)
    h0 = h0 if with_h0 else None
    o, S = _fn(name, impl, chunk, scale, ofs)(args, h0)
    o_ref, S_ref = loop(name, args, scale, h0)
    assert o.dtype == jnp.float32 and o.shape == o_ref.shape
    assert rel(o, o_ref) < TOL
    if ofs:
        assert S.dtype == jnp.float32 and S.shape == (B, H, K, V)
        assert rel(S, S_ref) < TOL
    else:
        assert S is None


@pytest.mark.parametrize("name", ["chunk_delta_rule", "chunk_gated_delta_rule", "chunk_gla",
                                  "chunk_simple_gla"])
def test_gradients(name):
    """jax.grad of a random projection of (o, final state) vs float64 central differences
    along random directions, for every tensor argument and the initial state."""
    T = 37
    args, h0 = tensors(name, T)
    r = np.random.default_rng(5)
    w_o = r.normal(size=args[2].shape)
    w_s = r.normal(size=h0.shape)
    f = getattr(fla, name)

    def loss(args, h0):
        o, S = f(*args, initial_state=h0, output_final_state=True, chunk_size=16,
                 implementation="chunked")
        return jnp.sum(o * w_o) + jnp.sum(S * w_s)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(args, h0)
    grads = list(grads[0]) + [grads[1]]
    xs = [np.asarray(x, np.float64) for x in args] + [np.asarray(h0, np.float64)]

    def loss64(xs):
        o, S = loop(name, tuple(xs[:-1]), None, xs[-1])
        return np.sum(o * w_o) + np.sum(S * w_s)

    eps = 1e-5
    for i, (x, gr) in enumerate(zip(xs, grads)):
        got, want = [], []
        for _ in range(2):
            d = r.normal(size=x.shape)
            plus, minus = list(xs), list(xs)
            plus[i], minus[i] = x + eps * d, x - eps * d
            want.append((loss64(plus) - loss64(minus)) / (2 * eps))
            got.append(np.sum(np.asarray(gr, np.float64) * d))
        assert rel(got, want) < GRAD_TOL, (name, i, got, want)


@pytest.mark.parametrize("name", NAMES)
def test_bf16(name):
    """bf16 inputs: o in bf16, the final state in float32, close to the float64 loop."""
    args, h0 = tensors(name, 37)
    bf = tuple(jnp.asarray(x, jnp.bfloat16) for x in args)
    o, S = getattr(fla, name)(*bf, initial_state=h0, output_final_state=True)
    assert o.dtype == jnp.bfloat16 and S.dtype == jnp.float32
    o_ref, S_ref = loop(name, tuple(np.asarray(x, np.float32) for x in bf), None, h0)
    assert rel(o, o_ref) < BF16_TOL
    assert rel(S, S_ref) < BF16_TOL


# ------------------------------------------------------------------------------------------
# fla's optional arguments
# ------------------------------------------------------------------------------------------
def test_positional_order():
    """fla's positional order: (..., scale, initial_state, output_final_state)."""
    for name in NAMES:
        args, h0 = tensors(name, 7)
        f = getattr(fla, name)
        if name == "chunk_simple_gla":  # (q, k, v, g, g_gamma, scale, ...)
            got = f(*args, None, 0.3, h0, True)
        else:
            got = f(*args, 0.3, h0, True)
        want = f(*args, scale=0.3, initial_state=h0, output_final_state=True)
        ref = loop(name, args, 0.3, h0)
        for a, b, c in zip(got, want, ref):
            np.testing.assert_array_equal(a, b)
            assert rel(a, c) < TOL


@pytest.mark.parametrize("name", ["chunk_delta_rule", "fused_recurrent_delta_rule",
                                  "chunk_gated_delta_rule"])
def test_qk_l2norm(name):
    args, h0 = tensors(name, 37)
    r = np.random.default_rng(3)
    q, k = (3 * r.normal(size=args[0].shape)).astype(np.float32), \
        (3 * r.normal(size=args[1].shape)).astype(np.float32)
    args = (q, k) + args[2:]
    o, S = getattr(fla, name)(*args, initial_state=h0, output_final_state=True,
                              use_qk_l2norm_in_kernel=True)
    o_ref, S_ref = loop(name, (l2norm(q), l2norm(k)) + args[2:], None, h0)
    assert rel(o, o_ref) < TOL and rel(S, S_ref) < TOL


def test_fused_recurrent_beta_none():
    (q, k, v, _), h0 = tensors("fused_recurrent_delta_rule", 37)
    o, S = fla.fused_recurrent_delta_rule(q, k, v, initial_state=h0, output_final_state=True)
    o_ref, S_ref = loop_delta(q, k, v, np.ones(q.shape[:3]), None, K ** -0.5, h0)
    assert rel(o, o_ref) < TOL and rel(S, S_ref) < TOL


@pytest.mark.parametrize("name", ["chunk_gated_delta_rule", "chunk_gla", "chunk_simple_gla"])
def test_state_v_first(name):
    args, h0 = tensors(name, 37)
    o, S = getattr(fla, name)(*args, initial_state=np.swapaxes(h0, -1, -2),
                              output_final_state=True, state_v_first=True)
    o_ref, S_ref = loop(name, args, None, h0)
    assert S.shape == (B, H, V, K)
    assert rel(o, o_ref) < TOL and rel(np.swapaxes(S, -1, -2), S_ref) < TOL


def test_gated_delta_rule_options():
    """Grouped value heads, beta through 2 sigmoid, and the gate computed in the op."""
    T, HV = 37, 2 * H
    r = np.random.default_rng(4)
    q = r.normal(size=(B, T, H, K)).astype(np.float32)
    k = _unit(r.normal(size=(B, T, H, K))).astype(np.float32)
    v = r.normal(size=(B, T, HV, V)).astype(np.float32)
    x = r.normal(size=(B, T, HV)).astype(np.float32)  # raw gate input
    b = r.normal(size=(B, T, HV)).astype(np.float32)  # beta logits
    A_log = r.normal(size=HV).astype(np.float32) - 1.0
    dt_bias = r.normal(size=HV).astype(np.float32)
    h0 = r.normal(size=(B, HV, K, V)).astype(np.float32)
    o, S = fla.chunk_gated_delta_rule(
        q, k, v, x, b, initial_state=h0, output_final_state=True,
        use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True, use_gate_in_kernel=True,
        A_log=A_log, dt_bias=dt_bias)
    g = -np.exp(A_log.astype(np.float64)) * softplus(x.astype(np.float64) + dt_bias)
    beta = 2 / (1 + np.exp(-b.astype(np.float64)))
    rep = lambda a: np.repeat(a, HV // H, axis=2)  # value head j reads q/k head j // 2
    o_ref, S_ref = loop_delta(rep(q), rep(k), v, beta, g, K ** -0.5, h0)
    assert o.shape == (B, T, HV, V)
    assert rel(o, o_ref) < TOL and rel(S, S_ref) < TOL


def test_simple_gla_g_gamma_and_no_decay():
    (q, k, v, _), h0 = tensors("chunk_simple_gla", 37)
    g_gamma = np.array([-0.1, -0.7], np.float32)
    o, S = fla.chunk_simple_gla(q, k, v, g_gamma=g_gamma, initial_state=h0,
                                output_final_state=True)
    o_ref, S_ref = loop_gla(q, k, v, np.broadcast_to(g_gamma, q.shape[:3]), K ** -0.5, h0)
    assert rel(o, o_ref) < TOL and rel(S, S_ref) < TOL
    o, S = fla.chunk_simple_gla(q, k, v, initial_state=h0, output_final_state=True)
    o_ref, S_ref = loop_gla(q, k, v, np.zeros(q.shape[:3]), K ** -0.5, h0)
    assert rel(o, o_ref) < TOL and rel(S, S_ref) < TOL


# ------------------------------------------------------------------------------------------
# what is refused
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_cu_seqlens_not_implemented(name):
    args, _ = tensors(name, 7)
    with pytest.raises(NotImplementedError, match="variable-length"):
        getattr(fla, name)(*args, cu_seqlens=np.array([0, 3, 7]))


@pytest.mark.parametrize("name", ["chunk_delta_rule", "chunk_gated_delta_rule",
                                  "chunk_simple_gla"])
def test_kwargs_refused(name):
    args, _ = tensors(name, 7)
    f = getattr(fla, name)
    with pytest.raises(ValueError, match="head_first"):
        f(*args, head_first=False)
    with pytest.raises(TypeError, match="no_such_argument"):
        f(*args, no_such_argument=1)


def test_other_refusals():
    args, _ = tensors("chunk_gated_delta_rule", 7)
    q, k, v, g, beta = args
    with pytest.raises(NotImplementedError, match="cp_context"):
        fla.chunk_gated_delta_rule(*args, cp_context=object())
    with pytest.raises(ValueError, match="use_beta_sigmoid_in_kernel"):
        fla.chunk_gated_delta_rule(*args, allow_neg_eigval=True)
    with pytest.raises(ValueError, match="A_log"):
        fla.chunk_gated_delta_rule(*args, use_gate_in_kernel=True)
    with pytest.raises(ValueError, match="multiple"):
        fla.chunk_gated_delta_rule(q, k, np.concatenate([v, v[:, :, :1]], 2),
                                   np.concatenate([g, g[:, :, :1]], 2),
                                   np.concatenate([beta, beta[:, :, :1]], 2))
    (q, k, v, beta), _ = tensors("fused_recurrent_delta_rule", 7)
    with pytest.raises(NotImplementedError, match="per-value beta"):
        fla.fused_recurrent_delta_rule(q, k, v, np.ones(v.shape, np.float32))
    with pytest.raises(ValueError, match="positive"):
        fla.fused_recurrent_delta_rule(q, k, v, beta, scale=-1.0)
    (q, k, v, g), _ = tensors("chunk_simple_gla", 7)
    with pytest.raises(ValueError, match="at most one"):
        fla.chunk_simple_gla(q, k, v, g, g_gamma=np.zeros(H, np.float32))
    (q, k, v, g), _ = tensors("chunk_gla", 7)
    with pytest.raises(ValueError, match="g must have shape"):
        fla.chunk_gla(q, k, v, g[..., 0])


# ------------------------------------------------------------------------------------------
# against fla itself (GPU machine)
# ------------------------------------------------------------------------------------------
_FLA_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import fla.ops.delta_rule, fla.ops.gated_delta_rule, fla.ops.gla, fla.ops.simple_gla

    d = dict(np.load(sys.argv[1]))
    name, n = str(d.pop("name")), int(d.pop("n"))
    mod = {"chunk_delta_rule": fla.ops.delta_rule, "fused_recurrent_delta_rule":
           fla.ops.delta_rule, "chunk_gated_delta_rule": fla.ops.gated_delta_rule,
           "chunk_gla": fla.ops.gla, "chunk_simple_gla": fla.ops.simple_gla}[name]
    # bf16 for q, k, v, beta (fla's chunk delta rules refuse float32); f32 log decays, h0
    args = [torch.tensor(d[f"a{i}"], device="cuda") for i in range(n)]
    args = [a if i == int(d["g_index"]) else a.to(torch.bfloat16) for i, a in enumerate(args)]
    args = [a.requires_grad_() for a in args]
    h0 = torch.tensor(d["h0"], device="cuda").requires_grad_()
    try:
        o, ht = getattr(mod, name)(*args, initial_state=h0, output_final_state=True)
    except Exception as e:  # fla refuses some ops on some images (e.g. Gated DeltaNet)
        print(f"fla refused: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(3)
    loss = (o.float() * torch.tensor(d["w_o"], device="cuda")).sum() + \\
        (ht.float() * torch.tensor(d["w_s"], device="cuda")).sum()
    loss.backward()
    out = {"o": o, "S": ht, "dh0": h0.grad}
    out.update({f"d{i}": a.grad for i, a in enumerate(args)})
    np.savez(sys.argv[2], **{k: t.float().detach().cpu().numpy() for k, t in out.items()})
""")


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (fla runs on CUDA)")
@pytest.mark.parametrize("name", NAMES)
def test_against_fla(tmp_path, name):
    """Same inputs (bf16 values) into fla and lrnn.ops.fla: outputs, final states and
    gradients agree to bf16 accuracy."""
    T = 300
    r = np.random.default_rng(11)
    bfv = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))
    Bg, Hg, Kg, Vg = 2, 4, 64, 64
    q = bfv(r.normal(size=(Bg, T, Hg, Kg)))
    k = r.normal(size=(Bg, T, Hg, Kg))
    k = bfv(k / np.linalg.norm(k, axis=-1, keepdims=True)) if "delta" in name else bfv(k)
    v = bfv(r.normal(size=(Bg, T, Hg, Vg)))
    beta = bfv(r.uniform(0, 1, (Bg, T, Hg)))
    g_head = np.log(1 / (1 + np.exp(-(r.normal(size=(Bg, T, Hg)) + 3)))).astype(np.float32)
    g_key = np.log(1 / (1 + np.exp(-(r.normal(size=(Bg, T, Hg, Kg)) + 3)))).astype(np.float32)
    args, g_index = {
        "chunk_delta_rule": ((q, k, v, beta), -1),
        "fused_recurrent_delta_rule": ((q, k, v, beta), -1),
        "chunk_gated_delta_rule": ((q, k, v, g_head, beta), 3),
        "chunk_gla": ((q, k, v, g_key), 3),
        "chunk_simple_gla": ((q, k, v, g_head), 3),
    }[name]
    h0 = r.normal(size=(Bg, Hg, Kg, Vg)).astype(np.float32)
    w_o = r.normal(size=v.shape).astype(np.float32)
    w_s = r.normal(size=h0.shape).astype(np.float32)
    pin, pout, script = tmp_path / "in.npz", tmp_path / "out.npz", tmp_path / "run_fla.py"
    script.write_text(_FLA_SCRIPT)
    np.savez(pin, name=name, n=len(args), g_index=g_index, h0=h0, w_o=w_o, w_s=w_s,
             **{f"a{i}": a for i, a in enumerate(args)})
    env = dict(os.environ, TRITON_CACHE_DIR="/tmp/triton", HOME="/tmp/home")
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    res = subprocess.run([sys.executable, str(script), str(pin), str(pout)], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    if res.returncode == 3:
        pytest.skip(res.stderr.strip().splitlines()[-1])
    if res.returncode != 0:
        pytest.fail("fla failed:\n" + res.stderr[-4000:])
    ref = dict(np.load(pout))

    jargs = tuple(jnp.asarray(a) if i == g_index else jnp.asarray(a, jnp.bfloat16)
                  for i, a in enumerate(args))

    def loss(jargs, h0):
        o, S = getattr(fla, name)(*jargs, initial_state=h0, output_final_state=True)
        return jnp.sum(o.astype(jnp.float32) * w_o) + jnp.sum(S * w_s), (o, S)

    (_, (o, S)), (dargs, dh0) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1),
                                                           has_aux=True))(jargs, jnp.asarray(h0))
    got = {"o": o, "S": S, "dh0": dh0}
    got.update({f"d{i}": d for i, d in enumerate(dargs)})
    errs = {n: rel(np.asarray(jnp.asarray(x, jnp.float32)), ref[n]) for n, x in got.items()}
    print(name, "rel err vs fla:", errs)
    for n, e in errs.items():
        assert e < 3e-2, (n, errs)
