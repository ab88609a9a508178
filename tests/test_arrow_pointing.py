"""The arrow-pointing task: labels on hand-made scenes, the sampler, the registry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tasks import get_task, task_names
from experiments.tasks.arrow_pointing import ArrowParams, ArrowPointing, points_at, render


def scene(center, angle, circle, radius, length=12.0, width=2.0):
    a = lambda x: jnp.asarray([x], jnp.float32)
    return ArrowParams(
        jnp.asarray([center], jnp.float32),
        a(angle),
        a(length),
        a(width),
        jnp.asarray([circle], jnp.float32),
        a(radius),
    )


# (arrow centre, angle, circle centre, radius, label)
HAND_MADE = [
    ((20, 30), 0.0, (50, 30), 6, True),  # straight at it along +x
    ((20, 30), math.pi, (50, 30), 6, False),  # pointing away
    ((20, 30), math.pi / 2, (50, 30), 6, False),  # perpendicular
    ((50, 30), math.pi, (20, 30), 6, True),  # along -x
    ((30, 10), math.pi / 2, (30, 50), 8, True),  # along +y
    ((30, 10), -math.pi / 2, (30, 50), 8, False),  # along -y, circle behind
    ((20, 30), 0.0, (50, 35.9), 6, True),  # grazes inside: offset 5.9 < 6
    ((20, 30), 0.0, (50, 36.1), 6, False),  # misses: offset 6.1 > 6
    ((10, 10), math.pi / 4, (40, 40), 3, True),  # diagonal
    ((10, 10), math.pi / 4 + 0.2, (40, 40), 3, False),  # diagonal, 0.2 rad off at distance 42
]


@pytest.mark.parametrize("center,angle,circle,radius,label", HAND_MADE)
def test_points_at_hand_made(center, angle, circle, radius, label):
    p = scene(center, angle, circle, radius)
    assert bool(points_at(p.center, p.angle, p.circle, p.radius)[0]) is label


def test_render_hand_made():
    # arrow at (20, 30) pointing +x, length 12: shaft from x = 14 to 26 at y = 30
    img = np.asarray(render(scene((20, 30), 0.0, (50, 30), 6), 64))[0, :, :, 0]
    assert img.shape == (64, 64) and img.min() >= 0 and img.max() <= 1
    assert img[20, 30] == 1 and img[15, 30] == 1 and img[25, 29] > 0  # shaft (pixel centres +.5)
    assert img[20, 40] == 0 and img[10, 30] == 0  # beside and behind the arrow
    assert img[50, 30] == 0  # the circle is an outline: empty centre
    assert img[56, 30] > 0.5 and img[44, 30] > 0.5 and img[50, 24] > 0.5  # on the ring
    # the head strokes go back from the tip (26, 30) at +-35 degrees: left of the tip only
    assert img[23, 32] > 0 and img[23, 28] > 0 and img[29, 32] == 0
    # x is the first image axis: the transposed scene draws the transposed image
    img_t = np.asarray(render(scene((30, 20), math.pi / 2, (30, 50), 6), 64))[0, :, :, 0]
    np.testing.assert_allclose(img_t, img.T, atol=1e-5)


@pytest.fixture(scope="module")
def task():
    t = ArrowPointing(train_sizes=(64, 64), test_sizes=(64, 128))
    return t


def test_sampler(task):
    sample = jax.jit(task.sample_params, static_argnums=(1, 2))
    for size in (64, 97):
        p = sample(jax.random.key(size), 384, size)
        labels = np.asarray(points_at(p.center, p.angle, p.circle, p.radius))
        assert 0.4 < labels.mean() < 0.6  # a fair coin
        # objects inside the canvas, sizes those of the training canvas (a third of the paper)
        for pt in (p.center, p.circle):
            assert np.all((np.asarray(pt) >= 10 - 1e-4) & (np.asarray(pt) <= size - 10 + 1e-4))
        assert np.all((np.asarray(p.radius) >= 5) & (np.asarray(p.radius) <= 10))
        assert np.all((np.asarray(p.length) >= 5) & (np.asarray(p.length) <= 10))
        assert np.all(np.asarray(p.width) >= 1)
        # apart (almost always: 32 candidate positions), and the label is unambiguous
        rel = np.asarray(p.circle - p.center)
        dist = np.linalg.norm(rel, axis=-1)
        assert np.mean(dist > np.asarray(p.radius + p.length / 2 + p.width)) > 0.99
        u = np.stack([np.cos(p.angle), np.sin(p.angle)], -1)
        across = np.abs(rel[:, 0] * u[:, 1] - rel[:, 1] * u[:, 0])
        along = np.sum(rel * u, -1)
        margin = np.abs(across - np.asarray(p.radius))
        assert np.all((margin > 1e-3) | (along < 0))
    x, y, m = jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(0), 8, 64)
    assert x.shape == (8, 64, 64, 1) and x.dtype == jnp.float32
    assert y.shape == (8,) and y.dtype == jnp.int32 and m.shape == (8,)
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0
    xt, yt, _ = jax.jit(task.train_batch, static_argnums=1)(jax.random.key(0), 8)
    np.testing.assert_allclose(xt, x, atol=1e-5)  # train_batch: sample at the training size
    np.testing.assert_array_equal(yt, y)


def test_registry_and_protocol(task):
    assert "arrow_pointing" in task_names()
    t = get_task("arrow_pointing")
    assert (t.kind, t.channels, t.num_classes, t.chance) == ("image", 1, 2, 0.5)
    assert t.train_sizes == (192, 192) and t.eval_sizes() == [192, 384]
    assert task.eval_sizes() == [64, 128]
    with pytest.raises(ValueError, match="size must be an int"):
        task.sample(jax.random.key(0), 2, 16)


@pytest.mark.parametrize("model", ["plstm", "vit"])
def test_presets(model):
    """Every preset builds a valid config; the half-scale ones extrapolate 96 px -> 192 px."""
    from experiments.configs import Config, apply_preset

    for name in ("cpu", "gpu", "paper", "tiny"):
        cfg = apply_preset(Config(task="arrow_pointing", model=model), name)
        assert cfg.test_max == 2 * cfg.train_max and cfg.train_max % cfg.patch_size == 0
        assert cfg.heads % 4 == 0 and cfg.d_model % cfg.heads == 0
    gpu = apply_preset(Config(task="arrow_pointing", model=model), "gpu")
    assert (gpu.train_max, gpu.patch_size, gpu.batch, gpu.lr) == (96, 8, 128, 3e-4)
