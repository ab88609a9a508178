"""Experiment configuration (one flat frozen dataclass) and named presets.

Every field is a command-line flag of ``python -m experiments.train`` (tyro writes
``n_h`` as ``--n-h``). A preset is a function ``(task, model) -> overrides`` applied before
the command line, so ``--preset cpu --steps 100`` starts from the preset and changes one field.

Presets
-------
``cpu``   minutes on a laptop CPU: small diagonal / DeltaNet models on parity and modular
          arithmetic, enough to see the eigenvalue-range gap on parity.
``paper`` the published protocol of Grazzi et al. (2025): 2 layers, d_model 128 (DeltaNet: 4
          heads, short convolution), AdamW lr 1e-3, batch 256, linear warmup then cosine to
          1e-3 x lr; parity 20k steps (2k warmup, weight decay 0); modular arithmetic 100k steps
          (10k warmup, weight decay 0.1); train lengths 3-40, test 40-256. Meant for a GPU.
``tiny``  a few steps of a very small model (tests and smoke runs).

A task refines any preset by defining ``preset_overrides(preset: str, model: str) -> dict``
(applied after the generic preset, before the command line); the image task does this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

from lrnn.nn import ModelConfig

__all__ = ["Config", "PRESETS", "apply_preset", "model_config", "preset_names"]


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. ``0`` for a size field means "the task's default"."""

    # --- what to train -----------------------------------------------------------------------
    out: str = ""  # output directory: config.json, metrics.jsonl, checkpoints/, eval.json/png
    task: str = "parity"  # task name (experiments.tasks.TASKS)
    model: str = "diagonal"  # model name (experiments.models.MODELS)
    preset: str = ""  # preset applied before the command-line flags ("" = none)
    seed: int = 0  # seed of parameters and data

    # --- model -----------------------------------------------------------------------------------
    eigen: Literal["unit", "signed"] = "signed"  # eigenvalue range: [0, 1] or [-1, 1]
    n_h: int = 1  # Householder steps per token (deltaproduct)
    layers: int = 2  # number of blocks
    d_model: int = 64  # residual width
    heads: int = 4  # heads (gla, deltanet, deltaproduct, transformer)
    d_state: int = 4  # per-channel state size of the diagonal mixer
    expand: int = 1  # diagonal mixer inner width = expand * d_model
    conv: int = 4  # short causal convolution kernel size (0: none)
    forget_gate: bool = False  # gated DeltaNet / DeltaProduct
    structure: str = "block_diagonal"  # SLiCE structure
    slice_state: int = 0  # SLiCE state size (0: d_model)
    slice_inputs: int = 16  # SLiCE driving dimension
    block_size: int = 4  # SLiCE block size
    rank: int = 2  # SLiCE DPLR rank
    mlp_ratio: int = 2  # gated-MLP width = mlp_ratio * d_model (0: no MLP)
    implementation: str = "auto"  # lrnn.ops implementation
    chunk_size: int = 64  # chunk size of chunked ops
    patch_size: int = 16  # patch size of image models (plstm, vit)

    # --- data ------------------------------------------------------------------------------------
    train_min: int = 0  # shortest training length (0: task default, 3)
    train_max: int = 0  # longest training length (0: task default, 40)
    test_min: int = 0  # shortest test length (0: task default, 40)
    test_max: int = 0  # longest test length (0: task default, 256)

    # --- optimisation ----------------------------------------------------------------------------
    steps: int = 2000  # optimiser steps
    batch: int = 64  # global batch size (sharded over the data axis)
    lr: float = 1e-3  # peak learning rate
    warmup: int = 200  # linear warmup steps
    end_lr_ratio: float = 1e-3  # cosine decays to end_lr_ratio * lr
    weight_decay: float = 0.0  # AdamW weight decay
    b1: float = 0.9  # Adam beta1
    b2: float = 0.999  # Adam beta2
    clip: float = 1.0  # global gradient-norm clipping (0: none)
    bf16: bool = False  # compute in bfloat16 (parameters, optimiser state and accumulation f32)

    # --- logging, checkpoints, evaluation ------------------------------------------------------
    log_every: int = 50  # steps between metrics.jsonl lines
    ckpt_every: int = 500  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 2  # checkpoints kept on disk
    eval_per_length: int = 32  # test examples per length
    eval_batch: int = 512  # sequences per evaluation batch
    progress: bool = True  # show a tqdm bar

    # --- devices ---------------------------------------------------------------------------------
    mesh: str = ""  # device mesh, e.g. "data=4" ("" = one device; "data=-1" = all devices)


def model_config(cfg: Config) -> ModelConfig:
    """The ``lrnn.nn.ModelConfig`` of a run (its mixer is the model name)."""
    names = {f.name for f in dataclasses.fields(ModelConfig)} - {"mixer", "dtype"}
    kw = {n: getattr(cfg, n) for n in names}
    return ModelConfig(mixer=cfg.model, dtype="bfloat16" if cfg.bf16 else "float32", **kw)


# ------------------------------------------------------------------------------------------
# Presets: (task, model) -> overrides
# ------------------------------------------------------------------------------------------
_ARITH = ("modular_arithmetic", "modular_arithmetic_brackets")


def _arrow_pointing_preset(name: str, model: str) -> dict:
    from experiments.tasks.arrow_pointing import PRESETS as ARROW_PRESETS

    return ARROW_PRESETS[name](model)


def _cpu(task: str, model: str) -> dict:
    if task == "arrow_pointing":  # the image task keeps its presets (plstm, vit)
        return _arrow_pointing_preset("cpu", model)
    # Small and fast on 2 CPU cores; the diagonal parity runs are the demo's.
    o = dict(layers=2, d_model=32, batch=64, lr=3e-3, warmup=100, weight_decay=0.0,
             eval_per_length=16, log_every=50, ckpt_every=500)
    if model == "diagonal":
        o.update(d_state=4, expand=2, conv=0, steps=1500, mlp_ratio=2)
    elif model in ("deltanet", "deltaproduct", "gla"):
        o.update(heads=2, conv=4, steps=1500, chunk_size=32)
    else:
        o.update(steps=1500)
    if task in _ARITH:
        o.update(steps=3000, weight_decay=0.1, d_model=64, warmup=300)
    return o


def _paper(task: str, model: str) -> dict:
    if task == "arrow_pointing":  # the image task keeps its presets (plstm, vit)
        return _arrow_pointing_preset("paper", model)
    o = dict(layers=2, d_model=128, lr=1e-3, batch=256, end_lr_ratio=1e-3,
             train_min=3, train_max=40, test_min=40, test_max=256,
             eval_per_length=64, log_every=100, ckpt_every=2000)
    if model in ("deltanet", "deltaproduct", "gla", "transformer"):
        o.update(heads=4, conv=4)
    if model == "diagonal":
        o.update(d_state=16, expand=2, conv=4)
    if task in _ARITH:
        o.update(steps=100_000, warmup=10_000, weight_decay=0.1)
    else:
        o.update(steps=20_000, warmup=2_000, weight_decay=0.0)
    return o


def _gpu(task: str, model: str) -> dict:
    if task == "arrow_pointing":
        return _arrow_pointing_preset("gpu", model)
    raise ValueError(
        f"preset 'gpu' is defined for the arrow_pointing task only, not {task!r}; "
        "the sequence tasks' GPU-sized runs use preset 'paper'"
    )


def _tiny(task: str, model: str) -> dict:
    if task == "arrow_pointing":  # the image task keeps its presets (plstm, vit)
        return _arrow_pointing_preset("tiny", model)
    return dict(layers=1, d_model=16, heads=2, d_state=2, conv=0, mlp_ratio=1, batch=8,
                steps=4, warmup=1, log_every=2, ckpt_every=2, train_max=12, test_min=13,
                test_max=16, eval_per_length=4, progress=False, chunk_size=8)


PRESETS: dict[str, Callable[[str, str], dict]] = {
    "cpu": _cpu, "gpu": _gpu, "paper": _paper, "tiny": _tiny,
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def apply_preset(cfg: Config, name: str) -> Config:
    """``cfg`` with the overrides of preset ``name`` for its task and model."""
    if not name:
        return cfg
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(preset_names())}")
    overrides = PRESETS[name](cfg.task, cfg.model)
    # A task may refine a preset: ``task.preset_overrides(preset, model) -> dict``.
    from experiments.tasks import get_task

    if cfg.task:
        hook = getattr(get_task(cfg.task), "preset_overrides", None)
        if hook is not None:
            overrides.update(hook(name, cfg.model) or {})
    return dataclasses.replace(cfg, preset=name, **overrides)
