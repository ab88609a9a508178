"""Pallas kernels in interpret mode (CPU) against float64 references, forward and gradients.

Forward: an independent float64 NumPy loop (written here, one token at a time). Gradients: a
float64 `lax.scan` of the same definition, differentiated by JAX. Every case has a length that
is not a multiple of the chunk, an initial state, negative eigenvalues (gates in [-1, 1], beta
up to 2), and checks the final state. Each case is one jitted forward+backward so that CI pays
one interpret-mode compile per case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk

F32 = jnp.float32


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


# ---------------------------------------------------------------- float64 NumPy references
def np_linear_recurrence(a, b, h0):
    h, out = h0.copy(), np.zeros_like(b)
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out[:, t] = h
    return out


def np_gla(q, k, v, gate, S, scale):
    o = np.zeros(q.shape[:3] + (v.shape[-1],))
    for t in range(q.shape[1]):
        g = gate[:, t][..., None] if gate.ndim == 4 else gate[:, t][..., None, None]
        S = g * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return o, S


def np_delta_product(q, k, v, beta, gate, S, scale):
    o = np.zeros(q.shape[:3] + (v.shape[-1],))
    for t in range(q.shape[1]):
        if gate is not None:
            S = gate[:, t][..., None, None] * S
        for j in range(k.shape[3]):
            kj, vj, bj = k[:, t, :, j], v[:, t, :, j], beta[:, t, :, j][..., None, None]
            S = S - bj * kj[..., :, None] * np.einsum("bhk,bhkv->bhv", kj, S)[..., None, :]
            S = S + bj * kj[..., :, None] * vj[..., None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", scale * q[:, t], S)
    return o, S


# ---------------------------------------------------------------- float64 JAX references (grads)
def jax_linear_recurrence(a, b, h0):
    def step(h, x):
        h = x[0] * h + x[1]
        return h, h

    _, hs = jax.lax.scan(step, h0, (a.swapaxes(0, 1), b.swapaxes(0, 1)))
    return hs.swapaxes(0, 1)


def jax_gla(q, k, v, gate, S, scale):
    g = gate if gate.ndim == 4 else jnp.broadcast_to(gate[..., None], k.shape)

    def step(S, x):
        qt, kt, vt, gt = x
        S = gt[..., :, None] * S + kt[..., :, None] * vt[..., None, :]
        return S, jnp.einsum("bhkv,bhk->bhv", S, scale * qt)

    S, o = jax.lax.scan(step, S, tuple(x.swapaxes(0, 1) for x in (q, k, v, g)))
    return o.swapaxes(0, 1), S


def jax_delta_product(q, k, v, beta, gate, S, scale):
    g = jnp.ones(q.shape[:3], q.dtype) if gate is None else gate

    def step(S, x):
        qt, kt, vt, bt, gt = x
        S = gt[..., None, None] * S
        for j in range(kt.shape[2]):
            kj, vj, bj = kt[:, :, j], vt[:, :, j], bt[:, :, j][..., None, None]
            kS = jnp.einsum("bhk,bhkv->bhv", kj, S)
            S = S + bj * kj[..., :, None] * (vj - kS)[..., None, :]
        return S, jnp.einsum("bhkv,bhk->bhv", S, scale * qt)

    S, o = jax.lax.scan(step, S, tuple(x.swapaxes(0, 1) for x in (q, k, v, beta, g)))
    return o.swapaxes(0, 1), S


# ---------------------------------------------------------------- inputs
def signed_gates(rng, shape):
    """Gates in +-[0.3, 1]: both signs, away from 0.

    The gate gradient is assembled in log space, d g = d log|g| / g, where d log|g| is a
    reverse cumulative sum of f32 terms that cancel; its absolute error is that of the sum, so
    the relative error of d g grows like 1/|g| for tiny gates (a property of the log-space
    form, shared with fla). The forward is exact for tiny gates: see
    `test_gates_near_zero_and_one_are_stable`.
    """
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.3, 1.0, size=shape)


def delta_inputs(rng, B, T, H, n_h, dk, dv, gated):
    k = rng.normal(size=(B, T, H, n_h, dk))
    return dict(
        q=rng.normal(size=(B, T, H, dk)),
        k=k / np.linalg.norm(k, axis=-1, keepdims=True),
        v=rng.normal(size=(B, T, H, n_h, dv)),
        beta=rng.uniform(0.0, 2.0, size=(B, T, H, n_h)),
        gate=signed_gates(rng, (B, T, H)) if gated else None,
        h0=rng.normal(size=(B, H, dk, dv)),
    )


def check_fwd_grads(f_pallas, f_ref64, np_out, args, names, fwd_tol, grad_tol):
    """f_*(*args) -> (o, S). Compares outputs with np_out and every input gradient."""
    rng = np.random.default_rng(123)
    w_o, w_s = rng.normal(size=np_out[0].shape), rng.normal(size=np_out[1].shape)

    def loss(f, dtype):
        def fn(*xs):
            o, S = f(*xs)
            return jnp.sum(o * w_o.astype(dtype)) + jnp.sum(S * w_s.astype(dtype)), (o, S)

        return fn

    args32 = [jnp.asarray(x, F32) for x in args]
    (_, (o, S)), g32 = jax.jit(
        jax.value_and_grad(loss(f_pallas, np.float32), range(len(args)), has_aux=True))(*args32)
    assert o.dtype == F32 and S.dtype == F32
    assert rel(o, np_out[0]) < fwd_tol, rel(o, np_out[0])
    assert rel(S, np_out[1]) < fwd_tol, rel(S, np_out[1])
    with jax.enable_x64(True):
        args64 = [jnp.asarray(x, jnp.float64) for x in args]
        g64 = jax.grad(loss(f_ref64, np.float64), range(len(args)), has_aux=True)(*args64)[0]
        g64 = [np.asarray(g) for g in g64]
    for name, a, b in zip(names, g32, g64):
        tol = grad_tol.get(name, grad_tol["default"]) if isinstance(grad_tol, dict) else grad_tol
        assert np.all(np.isfinite(np.asarray(a))), name
        assert rel(a, b) < tol, (name, rel(a, b))


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("block_t, scan, T", [
    (None, False, 37), (8, False, 37),
    # tiles as log-depth scans (the GPU default): 5 tiles (first and last row by row), 2, 1
    (8, True, 37), (8, True, 13), (8, True, 5),
    # forward tiles of 16, backward tiles of 8 (block_t_bwd)
    ((16, 8), True, 37)])
def test_linear_recurrence_fwd_grad(block_t, scan, T):
    block_t, block_t_bwd = block_t if isinstance(block_t, tuple) else (block_t, None)
    rng = np.random.default_rng(0)
    B, D = 2, 24
    a = rng.uniform(-1.0, 1.0, size=(B, T, D))  # negative eigenvalues
    b, h0 = rng.normal(size=(B, T, D)), rng.normal(size=(B, D))
    ref = np_linear_recurrence(a, b, h0)
    rng2 = np.random.default_rng(1)
    w = rng2.normal(size=ref.shape)
    a32, b32, h32 = (jnp.asarray(x, F32) for x in (a, b, h0))
    h, grads = jax.jit(jax.value_and_grad(
        lambda a, b, h0: jnp.sum(pk.linear_recurrence(a, b, h0, block_t=block_t,
                                                      tile_scan=scan,
                                                      block_t_bwd=block_t_bwd) * w),
        (0, 1, 2)))(a32, b32, h32)
    assert rel(pk.linear_recurrence(a32, b32, h32, block_t=block_t, tile_scan=scan), ref) < 1e-6
    with jax.enable_x64(True):
        g64 = jax.grad(lambda a, b, h0: jnp.sum(jax_linear_recurrence(a, b, h0) * w), (0, 1, 2))(
            *(jnp.asarray(x, jnp.float64) for x in (a, b, h0)))
    for x, y in zip(grads, g64):
        assert rel(x, y) < 1e-6


def test_linear_recurrence_bf16_and_no_h0():
    rng = np.random.default_rng(2)
    a = rng.uniform(-1.0, 1.0, size=(1, 19, 8))
    b = rng.normal(size=(1, 19, 8))
    h = pk.linear_recurrence(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16))
    assert h.dtype == jnp.bfloat16
    ref = np_linear_recurrence(np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64),
                               np.asarray(jnp.asarray(b, jnp.bfloat16), np.float64),
                               np.zeros((1, 8)))
    assert rel(h, ref) < 1e-2  # bf16 output rounding; the state is carried in f32


@pytest.mark.parametrize(
    "n_h, gated, T, C, pre",
    [(1, False, 37, 16, False), (1, True, 23, 16, False), (2, True, 21, 16, True),
     (3, False, 13, 16, False),
     # chunk_parallel (pallas_kernels.delta_chunk), head-major layout (TPU) and the GPU's
     # token-major layout (forced here: interpret mode defaults to head-major)
     (1, True, 37, 16, "chunk"), (2, False, 21, 16, "chunk"), (3, True, 13, 8, "chunk"),
     (1, True, 37, 16, "chunk-bthd"), (2, True, 21, 16, "chunk-bthd"),
     (1, False, 40, 32, "chunk-bthd"),
     # C = 32: the blocked (I + A)^{-1} (_common.unit_lower_inverse_blocked), gated, in the
     # default kernels and the chunk-parallel ones
     (1, True, 37, 32, True), (2, True, 21, 32, "chunk"),
     # the GPU organisation (`_target="gpu"`: 16 x 16 blocks of the inverse, W and U in
     # delta_chunk._wu_blocks; f32 on GPU caps C at 32, so two blocks per chunk)
     (1, True, 45, 32, "chunk-gpu"), (2, False, 21, 32, "chunk-gpu")],
)
def test_delta_product_fwd_grad(n_h, gated, T, C, pre):
    rng = np.random.default_rng(10 + n_h)
    B, H, dk, dv, scale = 1, 2, 16, 16, 0.5
    x = delta_inputs(rng, B, T, H, n_h, dk, dv, gated)
    np_out = np_delta_product(x["q"], x["k"], x["v"], x["beta"], x["gate"], x["h0"], scale)
    names = ["q", "k", "v", "beta", "gate", "h0"] if gated else ["q", "k", "v", "beta", "h0"]
    args = [x[n] for n in names]

    def split(xs):
        d = dict(zip(names, xs))
        return d["q"], d["k"], d["v"], d["beta"], d.get("gate"), d["h0"]

    def f_pallas(*xs):
        q, k, v, beta, gate, h0 = split(xs)
        if pre == "chunk-gpu":
            return pk.delta_product(q, k, v, beta, gate=gate, initial_state=h0, scale=scale,
                                    chunk_size=C, chunk_parallel=True, interpret=True,
                                    _target="gpu", recurrent=False)  # not delta_recurrent
        if pre in ("chunk", "chunk-bthd"):
            # bthd cases also tile the value dim: 2 tiles everywhere (key-side gradients summed
            # over tiles), or 2 tiles in the sequential kernels and 1 in the parallel ones
            tiles = {} if pre == "chunk" else dict(
                block_v=8, block_v_chunk=16 if n_h == 2 else None, _layout="bthd")
            return pk.delta_product(q, k, v, beta, gate=gate, initial_state=h0, scale=scale,
                                    chunk_size=C, chunk_parallel=True, **tiles)
        return pk.delta_product(q, k, v, beta, gate=gate, initial_state=h0, scale=scale,
                                chunk_size=C, precompute_inverse=pre)

    def f_ref(*xs):
        return jax_delta_product(*split(xs), scale)

    # The gate gradient is assembled from a reverse cumulative sum over the sequence of
    # q.dq - v.dv (f32), then divided by the gate, so it carries a few extra f32 roundings.
    check_fwd_grads(f_pallas, f_ref, np_out, args, names, 1e-5,
                    {"default": 1e-5, "gate": 1e-4})


@pytest.mark.parametrize("per_key, T, C, split", [
    (True, 37, 32, False), (False, 21, 16, False), (True, 29, 32, True),
    # chunk_parallel (pallas_kernels.gla_chunk): several sub-blocks per chunk, T not a multiple
    (True, 70, 64, "chunk"), (False, 45, 32, "chunk"), (True, 16, 16, "chunk"),
    # ... in the GPU's token-major layout [B, T, H, d] (no transposes)
    (True, 53, 32, "bthd"),
])
def test_gla_fwd_grad(per_key, T, C, split):
    rng = np.random.default_rng(20 + T)
    B, H, dk, dv, scale = 1, 2, 16, 16, 0.5
    names = ["q", "k", "v", "gate", "h0"]
    args = [rng.normal(size=(B, T, H, dk)), rng.normal(size=(B, T, H, dk)),
            rng.normal(size=(B, T, H, dv)),
            signed_gates(rng, (B, T, H, dk) if per_key else (B, T, H)),
            rng.normal(size=(B, H, dk, dv))]
    np_out = np_gla(*args[:4], args[4], scale)

    def f_pallas(q, k, v, g, h0):
        if split in ("chunk", "bthd"):
            return pk.gated_linear_attention(q, k, v, g, initial_state=h0, scale=scale,
                                             chunk_size=C, chunk_parallel=True,
                                             _layout="bthd" if split == "bthd" else None)
        return pk.gated_linear_attention(q, k, v, g, initial_state=h0, scale=scale, chunk_size=C,
                                         split_intra=split)

    def f_ref(q, k, v, g, h0):
        return jax_gla(q, k, v, g, h0, scale)

    # gate: reverse cumsum of q dq - k dk divided by the gate (see the delta test)
    check_fwd_grads(f_pallas, f_ref, np_out, args, names, 1e-5, {"default": 1e-5, "gate": 1e-4})


@pytest.mark.parametrize("chunk_parallel, C", [(False, 16), (True, 32)])
def test_gates_near_zero_and_one_are_stable(chunk_parallel, C):
    """Forward only: gates of 1e-12 and exactly 1 and -1 give finite, correct outputs."""
    rng = np.random.default_rng(5)
    B, T, H, dk, dv = 1, 40, 1, 16, 16
    q, k, v = (rng.normal(size=(B, T, H, d)) for d in (dk, dk, dv))
    gate = rng.choice([1e-12, 1.0, -1.0, 0.5], size=(B, T, H, dk))
    h0 = rng.normal(size=(B, H, dk, dv))
    o, S = pk.gated_linear_attention(*(jnp.asarray(x, F32) for x in (q, k, v, gate)),
                                     initial_state=jnp.asarray(h0, F32), chunk_size=C,
                                     chunk_parallel=chunk_parallel)
    o_ref, S_ref = np_gla(q, k, v, gate, h0, 1.0)
    assert rel(o, o_ref) < 1e-5 and rel(S, S_ref) < 1e-5


def test_bad_shapes_raise():
    z = jnp.zeros
    with pytest.raises(ValueError, match="beta"):
        pk.delta_product(z((1, 4, 2, 16)), z((1, 4, 2, 1, 16)), z((1, 4, 2, 1, 16)),
                         z((1, 4, 2)))
    with pytest.raises(ValueError, match="gate"):
        pk.gated_linear_attention(z((1, 4, 2, 16)), z((1, 4, 2, 16)), z((1, 4, 2, 16)),
                                  z((1, 4, 3)))
    with pytest.raises(ValueError, match="h0"):
        pk.linear_recurrence(z((1, 4, 8)), z((1, 4, 8)), z((2, 8)))


@pytest.mark.parametrize("op", ["gla", "delta"])
def test_chunk_parallel_bf16(op):
    """bf16 inputs through the chunk-parallel kernels (f32 accumulation; U kept in f32) are as
    close to the float64 reference on the same rounded inputs as the default kernels."""
    rng = np.random.default_rng(11)
    B, T, H, dk, dv, C = 1, 70, 2, 32, 32, 32
    bf = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(F32), np.float64)
    q, k, v = (bf(rng.normal(size=(B, T, H, d))) for d in (dk, dk, dv))
    h0 = rng.normal(size=(B, H, dk, dv))
    errs = {}
    for cp in (False, True, "bthd"):
        if op == "gla":
            g = signed_gates(np.random.default_rng(12), (B, T, H, dk))
            ref = np_gla(q, k, v, g, h0, 0.3)
            o, S = pk.gated_linear_attention(
                *(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), jnp.asarray(g, F32),
                initial_state=jnp.asarray(h0, F32), scale=0.3, chunk_size=C,
                chunk_parallel=bool(cp), _layout="bthd" if cp == "bthd" else None)
        else:
            k5 = k[:, :, :, None] / np.linalg.norm(k, axis=-1, keepdims=True)[:, :, :, None]
            k5, v5 = bf(k5), v[:, :, :, None]
            beta = np.random.default_rng(13).uniform(0, 2, (B, T, H, 1))
            g = signed_gates(np.random.default_rng(14), (B, T, H))
            ref = np_delta_product(q, k5, v5, beta, g, h0, 0.3)
            o, S = pk.delta_product(
                *(jnp.asarray(x, jnp.bfloat16) for x in (q, k5, v5)), jnp.asarray(beta, F32),
                gate=jnp.asarray(g, F32), initial_state=jnp.asarray(h0, F32), scale=0.3,
                chunk_size=C, chunk_parallel=bool(cp), _layout="bthd" if cp == "bthd" else None)
        assert o.dtype == jnp.bfloat16 and S.dtype == F32
        errs[cp] = (rel(o.astype(F32), ref[0]), rel(S, ref[1]))
    for cp in errs:
        assert max(errs[cp]) < 2e-2, errs
        # no worse than the default kernels beyond rounding noise
        for new, old in zip(errs[cp], errs[False]):
            assert new < 1.5 * old + 1e-3, errs


def test_delta_chunk_parallel_bf16_grads():
    """bf16, ungated, one value tile: the chunk-parallel gradient kernel writes dq, dk, dv in
    bf16 directly (GPU layout forced); their error against the float64 reference on the same
    rounded inputs matches the default kernels' (which round f32 gradients to bf16 after)."""
    rng = np.random.default_rng(21)
    B, T, H, d, C = 1, 45, 2, 32, 16
    bf = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(F32), np.float64)
    k = rng.normal(size=(B, T, H, 1, d))
    x = dict(q=bf(rng.normal(size=(B, T, H, d))),
             k=bf(k / np.linalg.norm(k, axis=-1, keepdims=True)),
             v=bf(rng.normal(size=(B, T, H, 1, d))), beta=bf(rng.uniform(0, 2, (B, T, H, 1))))
    w = rng.normal(size=(B, T, H, d))
    names = ["q", "k", "v", "beta"]

    def grads(f, dtype):
        loss = lambda *a: jnp.sum(f(*a)[0].astype(dtype) * jnp.asarray(w, dtype))
        return jax.grad(loss, range(4))(*(jnp.asarray(x[n], dtype) for n in names))

    with jax.enable_x64(True):
        ref = grads(lambda q, k, v, b: jax_delta_product(q, k, v, b, None, jnp.zeros(
            (B, H, d, d), jnp.float64), 0.3), jnp.float64)
    errs = {}
    for cp in (False, True):
        g = grads(lambda q, k, v, b, cp=cp: pk.delta_product(
            q, k, v, b, scale=0.3, chunk_size=C, chunk_parallel=cp,
            _layout="bthd" if cp else None), jnp.bfloat16)
        assert all(gi.dtype == jnp.bfloat16 for gi in g)
        errs[cp] = [rel(gi.astype(F32), r) for gi, r in zip(g, ref)]
    for n, new, old in zip(names, errs[True], errs[False]):
        assert new < 2e-2 and new < 1.5 * old + 1e-3, (n, errs)


@pytest.mark.parametrize("target", [None, "gpu"])
def test_gla_chunk_steep_sub_block(target):
    """The chunk-parallel GLA kernels take rescaled products for a diagonal 16 x 16 block whose
    within-block decay stays above e^-SPAN_LIMIT and the exact column loop otherwise: one
    sub-block here has gates of 0.02 on some keys (decay e^-59 over the block: the loop), the
    others gates in +-[0.3, 1] (products). Forward and every gradient against float64, in the
    CPU and in the GPU organisation, T not a multiple of the chunk, h0."""
    from pallas_kernels import gla_chunk

    rng = np.random.default_rng(37)
    B, T, H, dk, dv, scale, C = 1, 56, 1, 64, 32, 0.3, 32
    gate = signed_gates(rng, (B, T, H, dk))
    gate[:, 16:32, :, :8] = 0.02 * np.sign(gate[:, 16:32, :, :8])  # the chunk's second block
    span = -np.log(0.02) * (gla_chunk.SUB - 1)
    assert span > gla_chunk.SPAN_LIMIT > -np.log(0.3) * (gla_chunk.SUB - 1)
    names = ["q", "k", "v", "gate", "h0"]
    args = [rng.normal(size=(B, T, H, dk)), rng.normal(size=(B, T, H, dk)),
            rng.normal(size=(B, T, H, dv)), gate, rng.normal(size=(B, H, dk, dv))]
    np_out = np_gla(*args[:4], args[4], scale)

    def f_pallas(q, k, v, g, h0):
        return pk.gated_linear_attention(q, k, v, g, initial_state=h0, scale=scale,
                                         chunk_size=C, chunk_parallel=True, interpret=True,
                                         _target=target)

    def f_ref(q, k, v, g, h0):
        return jax_gla(q, k, v, g, h0, scale)

    check_fwd_grads(f_pallas, f_ref, np_out, args, names, 1e-5, {"default": 1e-5, "gate": 1e-4})


@pytest.mark.parametrize("dqk_tile", [None, 64])
def test_gla_chunk_gpu_tiling_interpret(dqk_tile, monkeypatch):
    """The GPU organisation of the chunk-parallel GLA kernels (token-major layout, key tiles of
    64 with partial score sums, 32-wide gate-gradient tiles, scanned cumulative sums, and the
    dq/dk key tile of the `stages --key-tile` sweep) run in interpret mode: forward and every
    gradient against the float64 reference, T not a multiple of the chunk."""
    from pallas_kernels import gla_chunk

    monkeypatch.setitem(gla_chunk.KEY_TILE, "dqk", dqk_tile)
    rng = np.random.default_rng(31)
    B, T, H, dk, dv, scale, C = 1, 40, 1, 128, 64, 0.3, 32
    names = ["q", "k", "v", "gate", "h0"]
    args = [rng.normal(size=(B, T, H, dk)), rng.normal(size=(B, T, H, dk)),
            rng.normal(size=(B, T, H, dv)), signed_gates(rng, (B, T, H, dk)),
            rng.normal(size=(B, H, dk, dv))]
    np_out = np_gla(*args[:4], args[4], scale)

    def f_pallas(q, k, v, g, h0):
        return pk.gated_linear_attention(q, k, v, g, initial_state=h0, scale=scale,
                                         chunk_size=C, chunk_parallel=True, interpret=True,
                                         _target="gpu")

    def f_ref(q, k, v, g, h0):
        return jax_gla(q, k, v, g, h0, scale)

    check_fwd_grads(f_pallas, f_ref, np_out, args, names, 1e-5, {"default": 1e-5, "gate": 1e-4})
