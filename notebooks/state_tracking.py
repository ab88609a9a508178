# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # State tracking: group word problems and DeltaProduct
#
# A word problem gives a sequence of group elements `g_0, g_1, ...` and asks, at every
# position, for the product `g_t o ... o g_0`. A model that solves it tracks the state of an
# automaton whose transitions are the group. DeltaNet's transition `I - beta k k^T` is a single
# (generalised) Householder reflection; DeltaProduct (Siems et al. 2025) multiplies `n_h` of
# them per token. With eigenvalues in `[-1, 1]` (`beta` in `[0, 2]`) one reflection can swap two
# things (S2), two reflections make a rotation and reach S3, and by Cartan-Dieudonne `n - 1`
# reflections reach any permutation of `n` things (S5 needs 4). With `beta` in `[0, 1]`
# (eigenvalues in `[0, 1]`) no product of the steps is a reflection.
#
# This notebook trains one-layer DeltaProduct models on **S3** with `n_h = 1, 2` and both
# eigenvalue ranges, and on **S5** with `n_h = 1 .. 4` (`[-1, 1]`), with the `cpu` preset
# (trained at length 8, tested to 64), draws the fraction of sequences that are right at every
# position up to each length (DeltaProduct's metric), and looks at the learned transitions: the
# eigenvalues of the per-token products of reflections.
#
# Set `LRNN_NOTEBOOK_SMALL=1` for a seconds-long run (the tests do).

# %%
import dataclasses
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.configs import Config, apply_preset
from experiments.train import evaluate, train

SMALL = os.environ.get("LRNN_NOTEBOOK_SMALL", "") not in ("", "0")
OUT = (Path(tempfile.mkdtemp(prefix="lrnn_state_tracking_")) if SMALL
       else Path("runs/state_tracking"))
GRID = [("s3", n_h, eigen) for n_h in (1, 2) for eigen in ("unit", "signed")]
GRID += [("s5", n_h, "signed") for n_h in (1, 2, 3, 4)]
if SMALL:
    GRID = [("s3", 1, "unit"), ("s3", 2, "signed")]


def config(task: str, n_h: int, eigen: str) -> Config:
    cfg = apply_preset(Config(task=task, model="deltaproduct"), "cpu")
    cfg = dataclasses.replace(cfg, n_h=n_h, eigen=eigen, out=str(OUT / f"{task}_nh{n_h}_{eigen}"))
    if SMALL:
        cfg = dataclasses.replace(cfg, steps=3, d_model=8, heads=2, head_dim=4, batch=4,
                                  train_min=6, train_max=6, test_max=12, eval_per_length=8,
                                  progress=False, implementation="chunked")
    return cfg


# %% [markdown]
# ## Train
# Each run resumes from its checkpoints in `runs/state_tracking/` if re-executed. The `cpu`
# preset: one layer, width 64, 4 heads of 16, no short convolution, no output gate, AdamW at
# 3e-3 with warmup and cosine decay, 3000 batches of 128 sequences of length 8 with a label at
# every position.

# %%
results, models = {}, {}
for task, n_h, eigen in GRID:
    cfg = config(task, n_h, eigen)
    model, t = train(cfg)
    models[(task, n_h, eigen)] = (model, t)
    results[(task, n_h, eigen)] = evaluate(model, t, t.eval_sizes(),
                                           per_length=cfg.eval_per_length, seed=cfg.seed)
    r = results[(task, n_h, eigen)]
    print(f"{task} n_h={n_h} {eigen:6s}: accuracy over lengths {t.test_sizes} "
          f"{r['mean_accuracy']:.3f}, all correct up to length {t.train_sizes[1]}: "
          f"{r['sequence_accuracy'][t.train_sizes[1] - 1]:.3f}; "
          f"90% of the sequences right up to length {r['length_90']}")

# %% [markdown]
# ## Fraction of sequences right at every position up to each length
# The dashed line is the training length. A model that has learned the group stays at 1 past
# it; one that has not falls at once.

# %%
groups = sorted({g for g, _, _ in GRID})
fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), squeeze=False)
for ax, group in zip(axes[0], groups):
    for (g, n_h, eigen), r in results.items():
        if g != group:
            continue
        rng = "[0, 1]" if eigen == "unit" else "[-1, 1]"
        ax.plot(r["lengths"], r["sequence_accuracy"], label=f"n_h = {n_h}, {rng}")
        lo, hi = r["sequence_accuracy_ci"]
        ax.fill_between(r["lengths"], lo, hi, alpha=0.2, lw=0)
    train_len = models[next(k for k in models if k[0] == group)][1].train_sizes[1]
    ax.axvline(train_len, ls="--", color="0.5")
    ax.set_title(f"{group.upper()}, one layer ({r['sequences']} sequences)")
    ax.set_xlabel("length")
    ax.set_ylabel("fraction all correct up to length")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What the learned transitions look like
# For a few tokens of each group element, the transition of head 0 is the product of the
# `n_h` steps `I - beta_j k_j k_j^T`. Its eigenvalues: with `[0, 1]` they stay real in
# `[0, 1]`; a learned reflection has one eigenvalue near `-1`; two reflections with different
# keys give a rotation, a conjugate pair on the unit circle.

# %%
import jax  # noqa: E402


def transitions(model, task, n_tokens: int = 24, head: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-token transition matrices of the first layer's head ``head`` and their tokens."""
    x, _, _ = task.sample(jax.random.key(0), 1, n_tokens)
    mixer = model.blocks[0].mixer
    h = model.mixer_inputs(x)[0]
    _, k, _, beta, _ = mixer._project(h)  # k [1, T, H, n_h, dk], beta [1, T, H, n_h]
    k, beta = np.asarray(k[0, :, head], np.float64), np.asarray(beta[0, :, head], np.float64)
    eye = np.eye(k.shape[-1])
    mats = []
    for t in range(n_tokens):
        A = eye
        for j in range(k.shape[1]):  # k_1 acts first
            A = (eye - beta[t, j] * np.outer(k[t, j], k[t, j])) @ A
        mats.append(A)
    return np.stack(mats), np.asarray(x[0])


keys = [k for k in GRID if k[0] == "s3"]
fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
for ax, key in zip(axes[0], keys):
    model, task = models[key]
    mats, toks = transitions(model, task)
    ev = np.linalg.eigvals(mats)  # [T, dk]
    # the eigenvalues away from 1 are the ones the steps move
    far = np.abs(ev - 1) > 1e-3
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="0.7"))
    sc = ax.scatter(ev.real[far], ev.imag[far], c=np.repeat(toks[:, None], ev.shape[1], 1)[far],
                    cmap="tab10", s=12)
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.2, 1.2)
    ax.set_aspect("equal")
    ax.set_title(f"S3, n_h = {key[1]}, {'[0, 1]' if key[2] == 'unit' else '[-1, 1]'}",
                 fontsize=9)
fig.suptitle("eigenvalues of the per-token transitions (head 0; colour = group element)",
             fontsize=9)
fig.tight_layout()
plt.show()

# %%
# Every eigenvalue has modulus at most 1 (each step is a contraction for beta in [0, 2]). With
# beta in [0, 1] each step is symmetric positive semi-definite, and a product of such matrices
# has real eigenvalues in [0, 1] (it is similar to a symmetric PSD one): no rotation, no sign.
for key in keys:
    mats, _ = transitions(*models[key])
    ev = np.linalg.eigvals(mats)
    assert np.abs(ev).max() <= 1 + 1e-6, key
    if key[2] == "unit":
        assert np.abs(ev.imag).max() < 1e-6 and ev.real.min() > -1e-6, key
print("every transition is a contraction; with [0, 1] the eigenvalues are real and >= 0")
