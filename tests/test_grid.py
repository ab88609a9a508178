"""lrnn.grid.plstm2d: scan vs sequential vs a float64 NumPy double loop, forward and gradients."""

import pathlib
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrnn import grid
from lrnn.grid import ORIENTATIONS, PLSTMGates, plstm2d

GRIDS = [(5, 7), (9, 4), (1, 6)]
MODES = ["unconstrained", "p", "p_signed", "d_rd", "d_dr"]


def rel(x, ref):
    """Relative error; absolute when the reference is exactly zero (e.g. d/dt_rr on 1 x Y)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(x - ref) / (np.linalg.norm(ref) or 1.0)


def numpy_plstm(q, k, v, g, orientation=0):
    """Float64 double loop over cells, running natively in the direction of ``orientation``."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = PLSTMGates(*(np.asarray(a, np.float64) for a in g))
    B, X, Y, H, dk = q.shape
    dv = v.shape[-1]
    fx, fy = ORIENTATIONS[orientation]
    sx, sy = (1 if fx else -1), (1 if fy else -1)  # offset of the neighbour that feeds a cell
    Cr = np.zeros((B, X, Y, H, dk, dv))
    Cd = np.zeros((B, X, Y, H, dk, dv))
    o = np.zeros((B, X, Y, H, dv))
    zero = np.zeros((B, H, dk, dv))
    for x in range(X - 1, -1, -1) if fx else range(X):
        for y in range(Y - 1, -1, -1) if fy else range(Y):
            cr_in = Cr[:, x + sx, y] if 0 <= x + sx < X else zero
            cd_in = Cd[:, x, y + sy] if 0 <= y + sy < Y else zero
            c = lambda a: a[:, x, y][..., None, None]  # noqa: B023
            kv = k[:, x, y][..., :, None] * v[:, x, y][..., None, :]
            read = c(g.m_r) * cr_in + c(g.m_d) * cd_in
            o[:, x, y] = np.einsum("bhkv,bhk->bhv", read, q[:, x, y])
            o[:, x, y] += (g.d[:, x, y] * np.sum(q[:, x, y] * k[:, x, y], -1))[..., None] * v[
                :, x, y
            ]
            Cr[:, x, y] = c(g.t_rr) * cr_in + c(g.t_rd) * cd_in + c(g.s_r) * kv
            Cd[:, x, y] = c(g.t_dd) * cd_in + c(g.t_dr) * cr_in + c(g.s_d) * kv
    return o


# jitted once per shape (eager dispatch of the associative scan compiles op by op)
run = jax.jit(plstm2d, static_argnames=("implementation", "orientation"))
p_mode = jax.jit(grid.p_mode_gates, static_argnames="signed")
d_mode = jax.jit(grid.d_mode_gates, static_argnames="chirality")


def make_inputs(seed, X, Y, mode, B=2, H=2, dk=3, dv=2):
    rng = np.random.default_rng(seed)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    q = f32(rng.normal(size=(B, X, Y, H, dk)))
    k = f32(rng.normal(size=(B, X, Y, H, dk)) / np.sqrt(dk))
    v = f32(rng.normal(size=(B, X, Y, H, dv)))
    pre = f32(rng.normal(size=(9, B, X, Y, H)) * 1.5)
    if mode == "unconstrained":
        # every gate in [-1, 1]: negative transitions, sources and marks included
        gates = PLSTMGates(*f32(rng.uniform(-1.0, 1.0, size=(9, B, X, Y, H))))
    elif mode.startswith("p"):
        gates = p_mode(*pre[:7], signed=mode == "p_signed")
    else:
        gates = d_mode(*pre[:8], chirality=mode[2:])
    return q, k, v, gates


@pytest.mark.parametrize("X,Y", GRIDS)
@pytest.mark.parametrize("mode", MODES)
def test_forward_matches_numpy(X, Y, mode):
    q, k, v, g = make_inputs(X * 10 + Y, X, Y, mode)
    ref = numpy_plstm(q, k, v, g)
    for impl in ("sequential", "scan"):
        o = run(q, k, v, g, implementation=impl)
        assert o.shape == v.shape and o.dtype == v.dtype
        assert rel(o, ref) < 2e-6, impl


def test_gate_modes_have_their_structure():
    _, _, _, gp = make_inputs(0, 4, 5, "p")
    np.testing.assert_allclose(gp.t_rr, gp.t_rd)
    np.testing.assert_allclose(gp.t_dr, gp.t_dd)
    assert np.all(np.asarray(gp.t_rr + gp.t_dr) <= 1 + 1e-6)
    assert np.all(np.asarray(gp.t_rr) >= 0)
    _, _, _, gs = make_inputs(0, 4, 5, "p_signed")
    assert np.any(np.asarray(gs.t_rr) < 0)
    for chir, zero in (("rd", "t_dr"), ("dr", "t_rd")):
        _, _, _, gd = make_inputs(0, 4, 5, "d_" + chir)
        assert np.all(np.asarray(getattr(gd, zero)) == 0)
        assert np.any(np.asarray(gd.t_rr) < 0) and np.all(np.abs(np.asarray(gd.t_dd)) <= 1)


def test_zero_transitions_and_single_column_row():
    """Exact zeros in t_dd (no logs in the cumulative product) and degenerate grids."""
    for X, Y in [(4, 1), (1, 1), (3, 5)]:
        q, k, v, g = make_inputs(3, X, Y, "unconstrained")
        t_dd = g.t_dd.at[:, :, ::2].set(0.0)
        g = g._replace(t_dd=t_dd)
        ref = numpy_plstm(q, k, v, g)
        assert rel(run(q, k, v, g), ref) < 2e-6


@pytest.mark.parametrize("orientation", range(4))
def test_orientations_equal_reference_on_flipped_grid(orientation):
    q, k, v, g = make_inputs(11, 5, 7, "unconstrained")
    ref = numpy_plstm(q, k, v, g, orientation)
    # scan only: the flipping code is shared by both implementations
    assert rel(run(q, k, v, g, orientation=orientation), ref) < 2e-6
    # and the flip identity itself: flip, run the natural orientation, flip back
    args64 = jax.tree.map(lambda a: np.asarray(a, np.float64), (q, k, v, g))
    qf, kf, vf, gf = grid.flip_grid(args64, orientation)
    o_flip = grid.flip_grid(numpy_plstm(qf, kf, vf, gf), orientation)
    assert rel(o_flip, ref) < 1e-12
    if orientation:
        assert rel(numpy_plstm(q, k, v, g), ref) > 0.1  # orientations really differ


def _loss(q, k, v, g, w, impl):
    return jnp.sum(plstm2d(q, k, v, g, implementation=impl) * w)


_grad = jax.jit(jax.grad(_loss, argnums=(0, 1, 2, 3)), static_argnames="impl")


@pytest.mark.parametrize("X,Y", GRIDS)
@pytest.mark.parametrize("mode", ["unconstrained", "p_signed", "d_rd"])
def test_gradients(X, Y, mode):
    """Float64: scan == sequential to 1e-10; float32 scan vs the float64 gradients (5 x 7)."""
    with jax.enable_x64(True):
        q, k, v, g = make_inputs(X + 7 * Y, X, Y, mode)
        args64 = jax.tree.map(lambda a: a.astype(jnp.float64), (q, k, v, g))
        w = jnp.asarray(np.random.default_rng(1).normal(size=v.shape), jnp.float64)
        g_seq = _grad(*args64, w, impl="sequential")
        g_scan = _grad(*args64, w, impl="scan")
        for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_seq)):
            assert a.dtype == jnp.float64
            assert rel(a, b) < 1e-10
    if (X, Y) != (5, 7):
        return  # one float32 check is enough (each grid shape costs a compilation)
    g32 = _grad(q, k, v, g, jnp.asarray(w, jnp.float32), impl="scan")
    names = ["q", "k", "v", *PLSTMGates._fields]
    for name, a, b in zip(names, jax.tree.leaves(g32), jax.tree.leaves(g_seq)):
        assert a.dtype == jnp.float32
        assert rel(a, b) < 1e-5, name


def test_bf16_inputs_accumulate_in_f32():
    q, k, v, g = make_inputs(5, 5, 7, "p")
    ref = numpy_plstm(q, k, v, g)
    bf = jax.tree.map(lambda a: a.astype(jnp.bfloat16), (q, k, v, g))
    o = run(*bf)
    assert o.dtype == jnp.bfloat16
    assert rel(o, ref) < 3e-2  # bf16 rounding of inputs and output only


def test_jit_and_bad_inputs():
    q, k, v, g = make_inputs(0, 3, 4, "p")
    o = run(q, k, v, g)
    assert rel(o, numpy_plstm(q, k, v, g)) < 2e-6
    with pytest.raises(ValueError, match="q must have shape"):
        plstm2d(q[0], k, v, g)
    with pytest.raises(ValueError, match="k must have the shape"):
        plstm2d(q, k[..., :2], v, g)
    with pytest.raises(ValueError, match="v must have shape"):
        plstm2d(q, k, v[:, :2], g)
    with pytest.raises(ValueError, match=r"gates.t_dd must have shape \[B, X, Y, H\]"):
        plstm2d(q, k, v, g._replace(t_dd=g.t_dd[..., None]))
    with pytest.raises(TypeError, match="gates must be a PLSTMGates"):
        plstm2d(q, k, v, tuple(g))
    with pytest.raises(ValueError, match="implementation must be one of"):
        plstm2d(q, k, v, g, implementation="chunked")
    with pytest.raises(ValueError, match="orientation must be an int in 0..3"):
        plstm2d(q, k, v, g, orientation=4)
    with pytest.raises(ValueError, match="chirality"):
        grid.d_mode_gates(*([g.s_r] * 8), chirality="rr")


def test_notebook_runs(monkeypatch):
    """notebooks/plstm_2d.py with its tiny configuration (it asserts its own scan check)."""
    monkeypatch.setenv("LRNN_NOTEBOOK_SMALL", "1")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *a, **k: plt.close("all"))
    path = pathlib.Path(__file__).parents[1] / "notebooks" / "plstm_2d.py"
    ns = runpy.run_path(str(path), run_name="__main__")
    assert ns["SMALL"] and ns["grad_err"] < 1e-4
