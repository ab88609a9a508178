"""Image models for the training CLI: ``plstm`` (2D pLSTM) and ``vit`` (the baseline).

Imported on first lookup by :mod:`experiments.models` (its ``_OPTIONAL_MODULES``). Both read
``d_model``, ``layers``, ``heads``, ``mlp_ratio``, ``patch_size`` and ``bf16`` from the config;
``plstm`` also ``implementation`` (``"sequential"`` or ``"scan"``; anything else is
``"auto"``: the sequential loop on CPU, the column scan elsewhere) and ``vit`` the task's
training size (its position-embedding grid).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from experiments.models import register_model
from lrnn.nn.vision import PLSTMVision, ViT

__all__ = ["build_plstm", "build_vit"]


def _check(cfg, task):
    if task.kind != "image":
        raise ValueError(
            f"model {cfg.model!r} needs an image task; task {task.name!r} is {task.kind!r}"
        )


def _common(cfg, task):
    return dict(
        patch=cfg.patch_size,
        d_model=cfg.d_model,
        layers=cfg.layers,
        heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        dtype=jnp.bfloat16 if cfg.bf16 else None,
    )


@register_model("plstm")
def build_plstm(cfg, task, *, rngs: nnx.Rngs) -> PLSTMVision:
    _check(cfg, task)
    impl = cfg.implementation if cfg.implementation in ("sequential", "scan") else "auto"
    return PLSTMVision(
        task.channels, task.num_classes, implementation=impl, rngs=rngs, **_common(cfg, task)
    )


@register_model("vit")
def build_vit(cfg, task, *, rngs: nnx.Rngs) -> ViT:
    _check(cfg, task)
    side = int(task.train_sizes[1])
    if side % cfg.patch_size:
        raise ValueError(f"training size {side} must be a multiple of patch_size {cfg.patch_size}")
    grid = (side // cfg.patch_size, side // cfg.patch_size)
    return ViT(task.channels, task.num_classes, grid=grid, rngs=rngs, **_common(cfg, task))
