"""Sequence parallelism on 8 CPU devices: shard_prefix, lrnn.scan(axis_name=...), the ops.

Every sharded result (forward, final state, gradients of every input including the initial
state) is compared with the unsharded call by relative error. Lengths: ``jax.shard_map``
splits time evenly, so T is a multiple of P; the local length T / P is *not* a multiple of
the chunk size (ragged last chunk on every shard). T not a multiple of P is rejected with an
error (tested). Transitions have negative eigenvalues throughout.

Compiles dominate the time on the 2-core CI machine, so the default run covers every op with
every P in {2, 4, 8} and both exchanges at least once (not the full product); the full
product is marked slow.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrnn
import lrnn.ops
from lrnn import parallel

RTOL = 2e-5  # float32 arithmetic against float32 arithmetic in another order


def rel(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def mesh1d(p: int, name: str = "seq", *, explicit: bool = True):
    """A 1D mesh over the first p devices; Explicit axes (jax.make_mesh's default) or Auto."""
    types = None if explicit else (jax.sharding.AxisType.Auto,)
    return jax.make_mesh((p,), (name,), types, devices=jax.devices()[:p])


def assert_close(got, want, what: str, tol: float = RTOL):
    leaves_g, leaves_w = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(leaves_g) == len(leaves_w), what
    for i, (g, w) in enumerate(zip(leaves_g, leaves_w)):
        assert g.shape == w.shape, f"{what}[{i}]: shape {g.shape} vs {w.shape}"
        e = rel(g, w)
        assert e < tol, f"{what}[{i}]: relative error {e:.2e} >= {tol:.0e}"


# ------------------------------------------------------------------------------------------
# shard_prefix against a float64 NumPy fold
# ------------------------------------------------------------------------------------------
def _np_fold(A, b, h0, dense: bool, reverse: bool):
    """States entering each shard and the final state, float64. A [P, ...], b [P, ..., n, m]."""
    p = A.shape[0]
    h = np.zeros(b.shape[1:]) if h0 is None else np.asarray(h0, np.float64)
    order = range(p - 1, -1, -1) if reverse else range(p)
    h_in = [None] * p
    for i in order:
        h_in[i] = h
        Ai = np.asarray(A[i], np.float64)
        h = (Ai @ h if dense else Ai[..., None] * h) + b[i]
    return np.stack(h_in), h


@pytest.mark.parametrize(
    "p, exchange, dense, reverse",
    [
        (1, "ppermute", False, False),
        (2, "all_gather", False, False),
        (3, "ppermute", True, False),  # P not a power of two
        (4, "all_gather", True, True),
        (4, "ppermute", False, True),
        (5, "ppermute", False, False),
        (8, "all_gather", False, False),
        (8, "ppermute", True, True),
    ],
)
def test_shard_prefix_matches_fold(p, exchange, dense, reverse):
    rng = np.random.default_rng(p)
    n, m = 3, 2
    a_shape = (p, 2, n, n) if dense else (p, 2, n)
    A = rng.uniform(-1.0, 1.0, a_shape).astype(np.float32)  # negative eigenvalues
    b = rng.normal(size=(p, 2, n, m)).astype(np.float32)
    h0 = rng.normal(size=(2, n, m)).astype(np.float32)
    monoid = lrnn.DENSE if dense else lrnn.DIAGONAL
    mesh = mesh1d(p, explicit=False)

    def local(A, b, h0):
        h_in, h_final = parallel.shard_prefix(
            monoid, lrnn.Affine(A[0], b[0]), h0, axis_name="seq", exchange=exchange,
            reverse=reverse,
        )
        return h_in[None], h_final

    # h_final leaves with out_specs P(): shard_map's replication check proves it invariant.
    f = jax.jit(
        jax.shard_map(
            local, mesh=mesh, in_specs=(jax.P("seq"), jax.P("seq"), jax.P()),
            out_specs=(jax.P("seq"), jax.P()),
        )
    )
    h_in, h_final = f(A, b, h0)
    want_in, want_final = _np_fold(A, b, h0, dense, reverse)
    assert_close(h_in, want_in, "h_in")
    assert_close(h_final, want_final, "h_final")


def test_shard_prefix_gradients_both_exchanges():
    """Gradients of (h_in, h_final) w.r.t. summaries and h0 against a plain jnp fold."""
    p = 4
    rng = np.random.default_rng(0)
    A = rng.uniform(-1, 1, (p, 2, 3, 3)).astype(np.float32)
    b = rng.normal(size=(p, 2, 3, 2)).astype(np.float32)
    h0 = rng.normal(size=(2, 3, 2)).astype(np.float32)
    w_in = rng.normal(size=(p, 2, 3, 2)).astype(np.float32)
    w_fin = rng.normal(size=(2, 3, 2)).astype(np.float32)
    mesh = mesh1d(p, explicit=False)

    def ref_loss(A, b, h0):
        h, hs = h0, []
        for i in range(p):
            hs.append(h)
            h = jnp.einsum("...ij,...jm->...im", A[i], h) + b[i]
        return jnp.sum(jnp.stack(hs) * w_in) + jnp.sum(h * w_fin)

    want = jax.grad(ref_loss, argnums=(0, 1, 2))(A, b, h0)
    for exchange in parallel.EXCHANGES:

        def local(A, b, h0, exchange=exchange):
            h_in, h_final = parallel.shard_prefix(
                lrnn.DENSE, lrnn.Affine(A[0], b[0]), h0, axis_name="seq", exchange=exchange
            )
            return h_in[None], h_final

        f = jax.shard_map(
            local, mesh=mesh, in_specs=(jax.P("seq"), jax.P("seq"), jax.P()),
            out_specs=(jax.P("seq"), jax.P()),
        )

        def loss(A, b, h0, f=f):
            h_in, h_final = f(A, b, h0)
            return jnp.sum(h_in * w_in) + jnp.sum(h_final * w_fin)

        got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(A, b, h0)
        assert_close(got, want, f"grads ({exchange})")


def test_shard_prefix_bad_input():
    mesh = mesh1d(2, explicit=False)
    A = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="exchange must be one of"):
        jax.shard_map(
            lambda A: parallel.shard_prefix(
                lrnn.DIAGONAL, lrnn.Affine(A[0], A[0]), axis_name="seq", exchange="ring"
            )[0][None],
            mesh=mesh, in_specs=jax.P("seq"), out_specs=jax.P("seq"),
        )(A)
    with pytest.raises(ValueError, match="h0 must have the shape of summary.b"):
        jax.shard_map(
            lambda A: parallel.shard_prefix(
                lrnn.DIAGONAL, lrnn.Affine(A[0], A[0]), jnp.zeros(4), axis_name="seq"
            )[0][None],
            mesh=mesh, in_specs=jax.P("seq"), out_specs=jax.P("seq"),
        )(A)
    with pytest.raises(TypeError, match="axis_name must be the name"):
        parallel.shard_prefix(lrnn.DIAGONAL, lrnn.Affine(A, A), axis_name=None)


def test_exchange_bytes_counts():
    s = lrnn.Affine(jax.ShapeDtypeStruct((2, 4, 8, 8), jnp.float32),
                    jax.ShapeDtypeStruct((2, 4, 8, 16), jnp.float32))
    size_a, size_b = 2 * 4 * 64 * 4, 2 * 4 * 128 * 4
    ag = parallel.exchange_bytes(lrnn.DENSE, s, 8, "all_gather")
    pp = parallel.exchange_bytes(lrnn.DENSE, s, 8, "ppermute")
    assert ag["exchange"] == 7 * (size_a + size_b)
    assert pp["exchange"] == 2 * (size_a + size_b) + 2 * size_b
    assert ag["final_state"] == pp["final_state"] == 2 * 7 / 8 * size_b
    assert parallel.exchange_bytes(lrnn.DENSE, s, 1)["total"] == 0


# ------------------------------------------------------------------------------------------
# lrnn.scan / lrnn.scan_sequential with axis_name
# ------------------------------------------------------------------------------------------
def _scan_case(structure: str, t: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, m = 4, 3
    if structure == "diagonal":
        monoid, a_shape = lrnn.DIAGONAL, (t, 2, n)
    elif structure == "block":
        monoid, a_shape = lrnn.BlockDiagonal(2), (t, 2, n // 2, 2, 2)
    else:
        monoid, a_shape = lrnn.DENSE, (t, 2, n, n)
    A = rng.uniform(-1, 1, a_shape).astype(np.float32)
    if structure == "dense":
        A = A / np.sqrt(n)  # keep the spectral radius near 1 so that states stay O(1)
    b = rng.normal(size=(t, 2, n, m) if structure != "diagonal" else (t, 2, n)).astype(
        np.float32
    )
    h0 = rng.normal(size=b.shape[1:]).astype(np.float32)
    w = rng.normal(size=b.shape).astype(np.float32)
    return monoid, A, b, h0, w


SCAN_CASES = [
    # (P, exchange, structure, reverse, sequential)
    (2, "ppermute", "dense", False, False),
    (4, "all_gather", "diagonal", False, False),
    (4, "ppermute", "block", True, False),
    (8, "all_gather", "dense", True, False),
    (8, "ppermute", "diagonal", False, True),
    (2, "all_gather", "diagonal", True, True),
]


@pytest.mark.parametrize("p, exchange, structure, reverse, sequential", SCAN_CASES)
def test_scan_axis_name(p, exchange, structure, reverse, sequential):
    """Forward and gradients (elements and h0) of the sharded scan vs the unsharded one."""
    t = 3 * p  # three steps per shard
    monoid, A, b, h0, w = _scan_case(structure, t, seed=p)
    mesh = mesh1d(p)
    fn = lrnn.scan_sequential if sequential else lrnn.scan
    sharded = parallel.sequence_sharded(
        functools.partial(fn, monoid, axis=0, reverse=reverse), mesh, time_axis=0,
        exchange=exchange,
    )

    def loss(call, A, b, h0):
        h = call(lrnn.Affine(A, b), h0=h0)
        return jnp.sum(h * w), h

    plain = functools.partial(lrnn.scan_sequential, monoid, axis=0, reverse=reverse)
    (g_ref, h_ref) = jax.jit(jax.grad(functools.partial(loss, plain), (0, 1, 2), has_aux=True))(
        A, b, h0
    )
    with jax.set_mesh(mesh):
        (g, h) = jax.jit(jax.grad(functools.partial(loss, sharded), (0, 1, 2), has_aux=True))(
            A, b, h0
        )
    assert_close(h, h_ref, "h")
    assert_close(g, g_ref, "grad (A, b, h0)")


def test_scan_axis_name_without_h0_auto_mesh():
    """No initial state; a mesh with Auto axes needs no ``jax.set_mesh``."""
    p = 4
    monoid, A, b, _, _ = _scan_case("diagonal", 2 * p)
    mesh = mesh1d(p, explicit=False)
    f = parallel.sequence_sharded(functools.partial(lrnn.scan, monoid), mesh, time_axis=0)
    h = jax.jit(f)(lrnn.Affine(A, b))
    assert_close(h, lrnn.scan_sequential(monoid, lrnn.Affine(A, b)), "h")


# ------------------------------------------------------------------------------------------
# sequence_sharded: lengths, meshes, errors
# ------------------------------------------------------------------------------------------
def test_length_not_multiple_of_devices_is_rejected():
    mesh = mesh1d(4)
    a = jnp.ones((1, 10, 3))
    f = parallel.sequence_sharded(lrnn.ops.linear_recurrence, mesh)
    with pytest.raises(ValueError, match=r"T = 10 .* not a multiple of the 4 devices"):
        f(a, a)


def test_sequence_sharded_bad_arguments():
    mesh = mesh1d(2)
    with pytest.raises(ValueError, match="axis 'time' is not an axis of the mesh"):
        parallel.sequence_sharded(lrnn.ops.linear_recurrence, mesh, axis="time")
    with pytest.raises(ValueError, match="exchange must be one of"):
        parallel.sequence_sharded(lrnn.ops.linear_recurrence, mesh, exchange="tree")
    f = parallel.sequence_sharded(lrnn.ops.linear_recurrence, mesh)
    with pytest.raises(ValueError, match="disagree on the length"):
        f(jnp.ones((1, 4, 3)), jnp.ones((1, 6, 3)))


# ------------------------------------------------------------------------------------------
# The ops
# ------------------------------------------------------------------------------------------
B, H, DK, DV = 2, 2, 4, 3
CHUNK = 4
T_LOCAL = 6  # not a multiple of CHUNK: every shard has a ragged last chunk


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _op_case(op: str, t: int, seed: int):
    """(fn, positional sequence arrays, keyword arrays, static keywords)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    if op == "linear_recurrence":
        a = rng.uniform(-1, 1, (B, t, DV)).astype(f32)
        b = rng.normal(size=(B, t, DV)).astype(f32)
        h0 = rng.normal(size=(B, DV)).astype(f32)
        return lrnn.ops.linear_recurrence, (a, b), {"h0": h0}, {"chunk_size": CHUNK}
    q = rng.normal(size=(B, t, H, DK)).astype(f32)
    S0 = rng.normal(size=(B, H, DK, DV)).astype(f32)
    static = {"chunk_size": CHUNK, "scale": 0.5}
    if op in ("gla_head", "gla_key"):
        k = rng.normal(size=(B, t, H, DK)).astype(f32) / 2
        v = rng.normal(size=(B, t, H, DV)).astype(f32)
        g_shape = (B, t, H) if op == "gla_head" else (B, t, H, DK)
        gate = rng.uniform(-1, 1, g_shape).astype(f32)  # negative gates
        return lrnn.ops.gated_linear_attention, (q, k, v, gate), {"initial_state": S0}, static
    if op == "delta_rule":
        k = _unit(rng.normal(size=(B, t, H, DK))).astype(f32)
        v = rng.normal(size=(B, t, H, DV)).astype(f32)
        beta = rng.uniform(0, 2, (B, t, H)).astype(f32)  # eigenvalues in [-1, 1]
        return lrnn.ops.delta_rule, (q, k, v, beta), {"initial_state": S0}, static
    if op in ("structured_dplr", "structured_block"):
        d_in, n = 2, 4
        x = rng.uniform(0.5, 1.5, (B, t, d_in)).astype(f32)
        b = rng.normal(size=(B, t, n)).astype(f32)
        h0 = rng.normal(size=(B, n)).astype(f32)
        if op == "structured_dplr":  # A_t = I + sum_i x^i (diag(d^i) + u^i v^i^T)
            structure = "dplr"
            weights = (
                rng.uniform(-1.0, -0.4, (d_in, n)).astype(f32),  # eigenvalues reach below 0
                0.2 * rng.normal(size=(d_in, n, 1)).astype(f32),
                0.2 * rng.normal(size=(d_in, n, 1)).astype(f32),
            )
        else:
            structure = "block_diagonal"
            weights = (0.4 * rng.normal(size=(d_in, n // 2, 2, 2)) - 0.3 * np.eye(2)).astype(f32)

        def structured(x, b, *, weights, **kw):
            return lrnn.ops.structured_recurrence(x, weights, b, **kw)

        return (structured, (x, b), {"weights": weights, "h0": h0},
                {"chunk_size": CHUNK, "structure": structure})
    assert op == "delta_product"
    nh = 2
    k = _unit(rng.normal(size=(B, t, H, nh, DK))).astype(f32)
    v = rng.normal(size=(B, t, H, nh, DV)).astype(f32)
    beta = rng.uniform(0, 2, (B, t, H, nh)).astype(f32)
    gate = rng.uniform(-1, 1, (B, t, H)).astype(f32)
    return (
        functools.partial(lrnn.ops.delta_product, gate=None),
        (q, k, v, beta),
        {"initial_state": S0, "gate": gate},
        static,
    )


def _check_op(op, p, exchange, implementation="chunked", batch_axis=None, mesh=None):
    t = T_LOCAL * p
    fn, args, kw, static = _op_case(op, t, seed=p)
    fn = functools.partial(fn, implementation=implementation, **static)
    if op == "delta_product":  # the gate is a sequence tensor: pass it positionally via a wrapper
        gate = kw.pop("gate")
        args = (*args, gate)

        def fn(q, k, v, beta, gate, _f=fn, **kw):
            return _f(q, k, v, beta, gate=gate, **kw)

    mesh = mesh1d(p) if mesh is None else mesh
    sharded = parallel.sequence_sharded(fn, mesh, exchange=exchange, batch_axis=batch_axis)
    rng = np.random.default_rng(100 + p)
    out_shapes = jax.eval_shape(lambda a, k: fn(*a, **k), args, kw)
    cot = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), out_shapes)

    def loss(call, args, kw):
        out = call(*args, **kw)
        return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(cot))), out

    grad = functools.partial(jax.grad, argnums=(0, 1), has_aux=True)
    g_ref, out_ref = jax.jit(grad(functools.partial(loss, fn)))(args, kw)
    with jax.set_mesh(mesh):
        g, out = jax.jit(grad(functools.partial(loss, sharded)))(args, kw)
    what = f"{op} P={p} {exchange} {implementation}"
    assert_close(out, out_ref, f"{what}: outputs (o, final state)")
    assert_close(g, g_ref, f"{what}: gradients (sequence inputs, initial state)")


OPS = [
    "linear_recurrence", "gla_head", "gla_key", "delta_rule", "delta_product",
    "structured_dplr", "structured_block",
]
# The default run: each op family once (structured_recurrence with DPLR, the BlockDiagonal
# monoid being covered by the scan tests; gla with a per-key gate and delta_rule in the slow
# set), P and the exchange varied. An op's axis_name path does not depend on P or the
# exchange (it hands its summary to shard_prefix, tested above for every P and both
# exchanges); the full product is slow.
OP_CASES = [
    ("linear_recurrence", 1, "all_gather"),  # a mesh axis of size 1
    ("linear_recurrence", 8, "ppermute"),
    ("gla_head", 2, "all_gather"),
    ("delta_product", 8, "all_gather"),  # delta_rule is delta_product with n_h = 1 (slow)
    ("structured_dplr", 2, "ppermute"),
]
OP_CASES_SLOW = [
    (op, p, ex)
    for op in OPS
    for p in (2, 4, 8)
    for ex in parallel.EXCHANGES
    if (op, p, ex) not in OP_CASES
]


@pytest.mark.parametrize("op, p, exchange", OP_CASES)
def test_op_sharded(op, p, exchange):
    _check_op(op, p, exchange)


@pytest.mark.slow  # the rest of the op x P x exchange product: 5-25 s of compiles each on CI
@pytest.mark.parametrize("op, p, exchange", OP_CASES_SLOW)
def test_op_sharded_full_product(op, p, exchange):
    _check_op(op, p, exchange)


@pytest.mark.slow  # ~8 s of compiles; same axis_name code path as "chunked"
def test_op_sharded_scan_implementation():
    _check_op("linear_recurrence", 4, "all_gather", implementation="scan")


@pytest.mark.slow  # 12-15 s of compiles each on CI; same axis_name code path as "chunked"
@pytest.mark.parametrize("op", ["gla_head", "delta_rule", "delta_product"])
@pytest.mark.parametrize("implementation", ["sequential", "scan"])
def test_op_sharded_other_implementations(op, implementation):
    _check_op(op, 4, "all_gather", implementation=implementation)


@pytest.mark.slow  # ~8 s of compiles; batch_axis is also covered by tests/test_parallel_train.py
def test_op_sharded_data_and_seq_mesh():
    """Batch over ``data`` and time over ``seq`` on a (2, 4) mesh."""
    mesh = jax.make_mesh((2, 4), ("data", "seq"))
    _check_op("gla_key", 4, "ppermute", batch_axis="data", mesh=mesh)


# ------------------------------------------------------------------------------------------
# Model helpers: causal halo, positions, the sequence_axis context
# ------------------------------------------------------------------------------------------
def _toy_layer(x, w, a):
    """A causal conv (K = 3, via causal_pad) then a linear recurrence picking up the context."""
    K, T = w.shape[0], x.shape[1]
    xp = parallel.causal_pad(x, K - 1)
    u = sum(w[j] * xp[:, j : j + T] for j in range(K))
    pos = parallel.position_offset(T) + jnp.arange(T)
    u = u + 0.01 * pos[None, :, None]
    return lrnn.ops.linear_recurrence(a, u, implementation="chunked", chunk_size=CHUNK,
                                      **parallel.axis_kwargs())


def test_model_helpers_sharded_equals_unsharded():
    p, t_local = 4, 3  # the halo (K - 1 = 2) fits in one shard
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, p * t_local, 5)).astype(np.float32)
    a = rng.uniform(-1, 1, (2, p * t_local, 5)).astype(np.float32)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    mesh = mesh1d(p)

    def loss(call, x, a, w):
        y = call(x, a, w=w)
        return jnp.sum(jnp.sin(y)), y

    def plain(x, a, *, w):
        return _toy_layer(x, w, a)

    sharded = parallel.sequence_sharded(plain, mesh, pass_axis_name=False)
    grad = functools.partial(jax.grad, argnums=(0, 1, 2), has_aux=True)
    g_ref, y_ref = jax.jit(grad(functools.partial(loss, plain)))(x, a, w)
    with jax.set_mesh(mesh):
        g, y = jax.jit(grad(functools.partial(loss, sharded)))(x, a, w)
    assert_close(y, y_ref, "y")
    assert_close(g, g_ref, "grad (x, a, w)")


def test_causal_pad_halo_wider_than_shard_is_rejected():
    mesh = mesh1d(4)
    f = parallel.sequence_sharded(lambda x: parallel.causal_pad(x, 3)[:, 3:], mesh,
                                  pass_axis_name=False)
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="width 3 exceeds the local length 2"):
        f(jnp.ones((1, 8, 2)))


def test_context_is_off_outside_sequence_sharded():
    assert parallel.current_axis() is None and parallel.axis_kwargs() == {}
    with parallel.sequence_axis("seq", "ppermute"):
        assert parallel.axis_kwargs() == {"axis_name": "seq", "exchange": "ppermute"}
    assert parallel.current_axis() is None
    x = jnp.arange(6.0).reshape(1, 3, 2)
    np.testing.assert_array_equal(parallel.causal_pad(x, 2), jnp.pad(x, ((0, 0), (2, 0), (0, 0))))
