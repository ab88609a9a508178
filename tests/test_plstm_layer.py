"""The pLSTM layer, the image models, and the training CLI on arrow_pointing (tiny)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrnn import grid
from lrnn.nn.plstm import PLSTM2D, four_orientations
from lrnn.nn.vision import PatchEmbed, PLSTMVision, ViT


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)


def test_four_orientations_equal_per_group_calls():
    rng = np.random.default_rng(0)
    B, X, Y, H, d = 2, 5, 3, 8, 3
    q, k, v = (jnp.asarray(rng.normal(size=(B, X, Y, H, d)), jnp.float32) for _ in range(3))
    g = grid.PLSTMGates(*jnp.asarray(rng.uniform(-1, 1, (9, B, X, Y, H)), jnp.float32))
    out = jax.jit(four_orientations)(q, k, v, g)
    G = H // 4
    for o in range(4):
        sl = slice(o * G, (o + 1) * G)
        ref = grid.plstm2d(
            q[:, :, :, sl], k[:, :, :, sl], v[:, :, :, sl],
            grid.PLSTMGates(*(a[..., sl] for a in g)), orientation=o,
        )
        assert rel(out[:, :, :, sl], ref) < 1e-6, o
    with pytest.raises(ValueError, match="multiple of 4"):
        four_orientations(q[:, :, :, :6], k[:, :, :, :6], v[:, :, :, :6],
                          grid.PLSTMGates(*(a[..., :6] for a in g)))


@pytest.mark.parametrize("mode", ["P", "D"])
def test_layer_shapes_gates_and_implementations(mode):
    # both implementations for P (the op tests cover them in depth), the scan for D
    impls = ("scan", "sequential") if mode == "P" else ("scan",)
    layer = {
        impl: PLSTM2D(16, 4, mode=mode, implementation=impl, rngs=nnx.Rngs(0)) for impl in impls
    }
    x = jax.random.normal(jax.random.key(1), (2, 5, 3, 16))
    ys = {impl: jax.jit(lambda x, m=m: m(x))(x) for impl, m in layer.items()}
    assert ys["scan"].shape == x.shape
    if mode == "P":
        assert rel(ys["scan"], ys["sequential"]) < 1e-5
    g = layer["scan"].gate_values(x)
    assert all(a.shape == (2, 5, 3, 4) for a in g)
    for name in ("s_r", "s_d", "m_r", "m_d", "d"):
        a = np.asarray(getattr(g, name))
        assert np.all((a > 0) & (a < 1)), name  # sigmoids
    if mode == "P":
        np.testing.assert_allclose(g.t_rr, g.t_rd)
        np.testing.assert_allclose(g.t_dr, g.t_dd)
        assert np.all(np.asarray(g.t_rr + g.t_dd) < 1) and float(jnp.mean(g.t_rr + g.t_dd)) > 0.9
    else:
        assert np.all(np.asarray(g.t_dr) == 0) and np.all(np.abs(np.asarray(g.t_rr)) < 1)
    with pytest.raises(ValueError, match="multiple of 4"):
        PLSTM2D(16, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="mode must be one of"):
        PLSTM2D(16, 4, mode="Q", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x must have shape \[B, X, Y, 16\]"):
        layer["scan"](x[..., :8])


def test_models_any_size_and_gradients():
    plstm = PLSTMVision(1, 2, patch=4, d_model=16, layers=2, heads=4, rngs=nnx.Rngs(0))
    vit = ViT(1, 2, grid=(2, 2), patch=4, d_model=16, layers=1, heads=2, rngs=nnx.Rngs(0))
    assert [b.mixer.mode for b in plstm.blocks] == ["P", "D"]
    for model in (plstm, vit):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        forward = lambda p, x, g=graphdef, r=rest: nnx.merge(g, p, r)(x)
        for side in (8, 12, 16):  # the training grid, 1.5x and 2x (shapes only: no compile)
            x = jax.ShapeDtypeStruct((2, side, side, 1), jnp.float32)
            y = jax.eval_shape(forward, params, x)
            assert y.shape == (2, 2) and y.dtype == jnp.float32
    # the pLSTM model at twice the training size: finite gradients for every parameter
    graphdef, params, rest = nnx.split(plstm, nnx.Param, ...)
    loss = lambda p, x: jnp.mean(nnx.merge(graphdef, p, rest)(x) ** 2)
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
    grads = jax.tree.leaves(jax.jit(jax.grad(loss))(params, x))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in grads)
    assert all(float(jnp.sum(jnp.abs(a))) > 0 for a in grads)  # every parameter learns
    assert vit.position_embedding(4, 4).shape == (4, 4, 16)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        plstm(jnp.ones((1, 10, 8, 1)))
    with pytest.raises(ValueError, match=r"images must have shape \[B, S_x, S_y, 1\]"):
        PatchEmbed(1, 8, 4, rngs=nnx.Rngs(0))(jnp.ones((1, 8, 8, 3)))


def test_models_registered():
    from experiments.configs import Config, apply_preset
    from experiments.models import build_model, model_names
    from experiments.train import make_task

    assert {"plstm", "vit"} <= set(model_names())
    for name in ("plstm", "vit"):
        cfg = apply_preset(Config(task="arrow_pointing", model=name), "tiny")
        task = make_task(cfg)
        model = build_model(cfg, task, rngs=nnx.Rngs(0))
        for side in task.eval_sizes():
            y = jax.eval_shape(model, jax.ShapeDtypeStruct((3, side, side, 1), jnp.float32))
            assert y.shape == (3, 2)


@pytest.mark.slow  # ~30 s of CPU (compiling a train step and two eval sizes); registration
# itself is covered by test_models_registered
def test_training_cli_tiny(tmp_path):
    """``python -m experiments.train --task arrow_pointing --model plstm --preset tiny``."""
    from experiments.train import main

    for model in ("plstm", "vit"):
        out = tmp_path / model
        main(["--task", "arrow_pointing", "--model", model, "--preset", "tiny",
              "--out", str(out)])
        ev = json.loads((out / "eval.json").read_text())
        assert ev["lengths"] == [32, 64] and len(ev["accuracy"]) == 2
        cfg = json.loads((out / "config.json").read_text())
        assert (cfg["patch_size"], cfg["train_max"], cfg["test_max"]) == (16, 32, 64)
        assert (out / "eval.png").exists()
