"""Experiment configuration (one flat frozen dataclass) and named presets.

Every field is a command-line flag of ``python -m experiments.train`` (tyro writes
``n_h`` as ``--n-h``). A preset is a function ``(task, model) -> overrides`` applied before
the command line, so ``--preset cpu --steps 100`` starts from the preset and changes one field.

Presets
-------
``cpu``   minutes on a laptop CPU: small diagonal / DeltaNet models on parity and modular
          arithmetic (enough to see the eigenvalue-range gap on parity), and one-layer
          DeltaProduct models on the group word problems (the S3 gap).
``paper`` the published protocols, following the papers' public code (see PAPERS.md):
          Grazzi et al. (2025) for parity and modular arithmetic (their generator's format,
          ``task_format="grazzi"``: 2 layers, d_model 128, AdamW lr 1e-3, batch 256, warmup then
          cosine to 1e-3 x lr, no clipping; parity 20k steps, modular arithmetic 100k);
          DeltaProduct (Siems et al. 2025) for the group word problems (1 layer, 8 heads of 32,
          99k sequences of length 128, batch 2048, 4,900 steps, test length 512), SLiCE's A5
          protocol for the ``slice`` model there. Meant for a GPU.
``slice`` SLiCE's protocols (Walker et al. 2025): its formal-language runs (cycle navigation,
          even pairs, modular arithmetic, parity) and, on group tasks, its A5 runs.
``tiny``  a few steps of a very small model (tests and smoke runs).

A task refines any preset by defining ``preset_overrides(preset: str, model: str) -> dict``
(applied after the generic preset, before the command line); the image task does this.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Literal

from lrnn.nn import ModelConfig

__all__ = ["Config", "PRESETS", "apply_preset", "model_config", "preset_names", "is_group_task"]


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. ``0`` for a size field means "the task's default"."""

    # --- what to train -----------------------------------------------------------------------
    out: str = ""  # output directory: config.json, metrics.jsonl, checkpoints/, eval.json/png
    task: str = "parity"  # task name (experiments.tasks.TASKS)
    model: str = "diagonal"  # model name (experiments.models.MODELS)
    preset: str = ""  # preset applied before the command-line flags ("" = none)
    seed: int = 0  # seed of parameters and data
    seeds: tuple[int, ...] = ()  # train these seeds at once as one vmapped ensemble: OUT/seed_<s>

    # --- model -----------------------------------------------------------------------------------
    eigen: Literal["unit", "signed"] = "signed"  # eigenvalue range: [0, 1] or [-1, 1]
    n_h: int = 1  # Householder steps per token (deltaproduct)
    layers: int = 2  # number of blocks
    d_model: int = 64  # residual width
    heads: int = 4  # heads (gla, deltanet, deltaproduct, transformer)
    head_dim: int = 0  # deltanet / deltaproduct per-head size (0: d_model / heads)
    out_gate: bool = True  # deltanet / deltaproduct output gate silu(W_z x)
    d_state: int = 4  # per-channel state size of the diagonal mixer
    expand: int = 1  # diagonal mixer inner width = expand * d_model
    conv: int = 4  # short causal convolution kernel size (0: none)
    forget_gate: bool = False  # gated DeltaNet / DeltaProduct
    structure: str = "block_diagonal"  # SLiCE structure
    slice_state: int = 0  # SLiCE state size (0: d_model)
    slice_inputs: int = 16  # SLiCE driving dimension
    slice_drive: Literal["tanh", "linear"] = "tanh"  # SLiCE drive: tanh(W x + c) or W x + c
    block_size: int = 4  # SLiCE block size
    rank: int = 2  # SLiCE DPLR rank
    mlp_ratio: int = 2  # gated-MLP width = mlp_ratio * d_model (0: no MLP)
    dropout: float = 0.0  # dropout on each block's mixer and MLP outputs
    implementation: str = "auto"  # lrnn.ops implementation
    chunk_size: int = 64  # chunk size of chunked ops
    patch_size: int = 16  # patch size of image models (plstm, vit)

    # --- data ------------------------------------------------------------------------------------
    task_format: Literal["lrnn", "grazzi"] = "lrnn"  # data format (grazzi: Grazzi et al.'s code)
    train_min: int = 0  # shortest training length (0: task default, 3)
    train_max: int = 0  # longest training length (0: task default, 40)
    test_min: int = 0  # shortest test length (0: task default, 40)
    test_max: int = 0  # longest test length (0: task default, 256)
    length: int = 0  # one length for training and test, overriding the four above (0: unused)
    holdout: float = 0.0  # group tasks: fraction of the words of each length kept out of training
    train_samples: int = 0  # a fixed training set of this many sequences, in epochs (0: fresh)
    aux_batch: int = 0  # group tasks: extra words of length aux_length per step, loss added
    aux_length: int = 2  # length of the aux_batch words (SLiCE's A5 protocol: 25 of length 2)

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
    no_decay: tuple[str, ...] = ()  # parameter names (path parts) exempt from weight decay
    slice_reg: float = 0.0  # SLiCE regulariser: loss + slice_reg * sum over layers of ||A||_F
    bf16: bool = False  # compute in bfloat16 (parameters, optimiser state and accumulation f32)

    # --- logging, checkpoints, evaluation ------------------------------------------------------
    log_every: int = 50  # steps between metrics.jsonl lines
    ckpt_every: int = 500  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 2  # checkpoints kept on disk
    eval_per_length: int = 256  # test sequences per length (per-token tasks: sequences in all)
    eval_batch: int = 512  # sequences per evaluation batch (at most)
    val_every: int = 0  # steps between validations during training (0: none)
    val_size: int = 8192  # validation sequences, lengths uniform over the test range
    early_stop: float = 0.0  # stop once the validation accuracy exceeds this (0: never)
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
_GRAZZI_FORMAT = ("parity",) + _ARITH  # tasks Grazzi et al.'s generator makes
_SLICE_TASKS = ("cycle_navigation", "even_pairs", "modular_arithmetic", "parity")
_MATRIX = ("deltanet", "deltaproduct", "gla")


def is_group_task(task: str) -> bool:
    """Whether ``task`` names a group word problem (s3, a5, z<n>, d<n>, ...)."""
    return bool(re.fullmatch(r"[sazd]\d+", task or ""))


def _arrow_pointing_preset(name: str, model: str) -> dict:
    from experiments.tasks.arrow_pointing import PRESETS as ARROW_PRESETS

    return ARROW_PRESETS[name](model)


def _cpu(task: str, model: str) -> dict:
    if task == "arrow_pointing":  # the image task keeps its presets (plstm, vit)
        return _arrow_pointing_preset("cpu", model)
    if is_group_task(task):
        return _cpu_groups(model)
    # Small and fast on 2 CPU cores; the diagonal parity runs are the demo's.
    o = dict(layers=2, d_model=32, batch=64, lr=3e-3, warmup=100, weight_decay=0.0,
             eval_per_length=256, log_every=50, ckpt_every=500)
    if model == "diagonal":
        o.update(d_state=4, expand=2, conv=0, steps=1500, mlp_ratio=2)
    elif model in _MATRIX:
        o.update(heads=2, conv=4, steps=1500, chunk_size=32)
    else:
        o.update(steps=1500)
    if task in _ARITH:
        o.update(steps=3000, weight_decay=0.1, d_model=64, warmup=300)
    return o


def _cpu_groups(model: str) -> dict:
    """S3 in minutes on a laptop: one layer of width 64 (4 heads of 16) trained at length 8,
    tested to 64. It shows the S3 gap: DeltaProduct n_h = 2 with [-1, 1] learns and carries
    past the training length, n_h = 1 does not (README, "State tracking")."""
    o = dict(layers=1, d_model=64, heads=4, head_dim=16, conv=0, out_gate=False, mlp_ratio=2,
             batch=128, lr=3e-3, warmup=100, end_lr_ratio=0.0, weight_decay=1e-6, clip=0.0,
             steps=3000, train_min=8, train_max=8, test_min=1, test_max=64,
             eval_per_length=256, log_every=50, ckpt_every=500, chunk_size=32)
    if model == "diagonal":
        o.update(d_state=4, expand=2)
    return o


def _paper(task: str, model: str) -> dict:
    """Grazzi et al. for the regular tasks, DeltaProduct for group word problems (SLiCE's A5
    protocol for the slice model there); each following its public code (PAPERS.md)."""
    if task == "arrow_pointing":  # the image task keeps its presets (plstm, vit)
        return _arrow_pointing_preset("paper", model)
    if is_group_task(task):
        return _slice_a5(model) if model == "slice" else _deltaproduct_groups(model)
    # Grazzi et al.: xlstm/experiments/*.yaml of automl/unlocking_state_tracking
    # Their runs used bf16 autocast, as ours (bf16: compute in bfloat16, parameters, optimiser
    # state and accumulation in float32); the bf16 step is the faster one since the fused
    # kernels (benchmarks/train_step/README.md).
    o = dict(layers=2, d_model=128, lr=1e-3, batch=256, end_lr_ratio=1e-3, clip=0.0, bf16=True,
             train_min=3, train_max=40, test_min=40, test_max=256,
             eval_per_length=256, log_every=100, ckpt_every=2000)
    if task in _GRAZZI_FORMAT:
        o.update(task_format="grazzi")
    if model in _MATRIX + ("transformer",):
        # fla's DeltaNet defaults: short conv 4, SwiGLU MLP of 4 d_model, no output gate
        o.update(heads=4, conv=4, mlp_ratio=4, out_gate=False)
    if model == "diagonal":
        # their Mamba: d_inner 256, d_state 16, d_conv 1, no MLP, no decay on A_log and D
        o.update(d_state=16, expand=2, conv=1, mlp_ratio=0, no_decay=("A_log", "skip"))
    if task in _ARITH:
        o.update(steps=100_000, warmup=10_000, weight_decay=0.1)
    else:
        o.update(steps=20_000, warmup=2_000, weight_decay=0.0)
    return o


def _deltaproduct_groups(model: str) -> dict:
    """automl/DeltaProduct state_tracking: 1 layer, hidden 128, 8 heads of 32, no short conv,
    no forget gate, no output gate, SwiGLU MLP 512; 99k training sequences of length 128 for
    100 epochs at batch 2048 (4,900 steps), AdamW lr 1e-3, weight decay 1e-6, cosine to 0 with
    no warmup, no clipping; per-token loss; tested on 1,000 sequences of length 512; in
    bfloat16 as theirs (and as the ``paper`` preset of the regular tasks)."""
    o = dict(layers=1, d_model=128, heads=8, head_dim=32, conv=0, forget_gate=False, bf16=True,
             out_gate=False, mlp_ratio=4, lr=1e-3, batch=2048, steps=4900, warmup=0,
             end_lr_ratio=0.0, weight_decay=1e-6, clip=0.0,
             train_min=128, train_max=128, test_min=1, test_max=512, train_samples=99_000,
             eval_per_length=1000, eval_batch=512, log_every=49, ckpt_every=490)
    if model == "diagonal":
        o.update(d_state=16, expand=2, conv=1, mlp_ratio=4)
    return o


def _slice_a5(model: str) -> dict:
    """SLiCE's A5 protocol (Benjamin-Walker/structured-linear-cdes, a5.json in its history):
    one block of width 128, block size 8, lr 2e-3 with 10% warmup then cosine to 1e-5,
    AdamW weight decay 1e-2 (0 on the embedding), dropout 0.1, the regulariser 1e-3 ||A||,
    batch 256 plus 25 words of length 2 each step, one length at a time (``--length L``, L in
    2..20) with 20% of the words of that length held out and used for validation, early stop
    at validation accuracy > 0.999 (every 10k of at most 1M steps)."""
    return _slice_common(model, block_size=8, layers=1, steps=1_000_000, warmup=100_000,
                         dropout=0.1, length=20, holdout=0.2, aux_batch=25, aux_length=2,
                         val_every=10_000, early_stop=0.999, eval_per_length=8192,
                         log_every=1000, ckpt_every=10_000)


def _slice_common(model: str, block_size: int, **protocol) -> dict:
    """What SLiCE's two protocols share (width 128, AdamW 2e-3 with weight decay 1e-2 but none
    on the embedding, cosine to 1e-5, batch 256, no clipping, validation on 8192 sequences),
    their model options, then ``protocol``."""
    o = dict(d_model=128, lr=2e-3, batch=256, end_lr_ratio=5e-3, weight_decay=1e-2,
             no_decay=("embed",), clip=0.0, val_size=8192, mlp_ratio=2)
    o.update(_slice_model(model, block_size))
    o.update(protocol)
    return o


def _slice_model(model: str, block_size: int) -> dict:
    if model == "slice":
        return dict(structure="block_diagonal", block_size=block_size, slice_state=0,
                    slice_inputs=128, slice_drive="linear", slice_reg=1e-3)
    if model in _MATRIX:
        return dict(heads=4, conv=4)
    if model == "diagonal":
        return dict(d_state=16, expand=2, conv=1)
    return {}


def _slice(task: str, model: str) -> dict:
    """SLiCE's formal-language protocol (train.py / run_experiment.py of
    Benjamin-Walker/structured-linear-cdes): 2 blocks of width 128, block-diagonal with blocks
    of 4, lr 2e-3, batch 256, 100k steps, 10% warmup then cosine to 1e-5, AdamW
    weight decay 1e-2 (0 on the embedding), dropout 0.01, the regulariser 1e-3 ||A||, train
    lengths 3-40, validation on 8192 sequences of lengths 40-256 every 5000 steps with early
    stopping above 0.9995. On group tasks: its A5 protocol."""
    if is_group_task(task):
        return _slice_a5(model)
    if task not in _SLICE_TASKS:
        raise ValueError(f"preset 'slice' is defined for {', '.join(_SLICE_TASKS)} and the "
                         f"group word problems, not {task!r}")
    return _slice_common(model, block_size=4, layers=2, steps=100_000, warmup=10_000,
                         dropout=0.01, train_min=3, train_max=40, test_min=40, test_max=256,
                         val_every=5000, early_stop=0.9995, eval_per_length=256,
                         log_every=500, ckpt_every=5000)


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
                steps=4, warmup=1, log_every=2, ckpt_every=2, train_min=3, train_max=12,
                test_min=13, test_max=16, eval_per_length=4, progress=False, chunk_size=8)


PRESETS: dict[str, Callable[[str, str], dict]] = {
    "cpu": _cpu, "gpu": _gpu, "paper": _paper, "slice": _slice, "tiny": _tiny,
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
