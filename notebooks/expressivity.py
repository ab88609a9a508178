# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Expressivity: negative eigenvalues and parity
#
# A linear RNN updates its state with `S_t = A_t S_{t-1} + b_t`. To track the parity of a bit
# string it must *flip* something on every `1`: an eigenvalue of `A_t` near `-1`. Grazzi et al.
# (2025) show that the usual ranges (Mamba's `a = exp(softplus(dt) A)` in `[0, 1]`, DeltaNet's
# `beta = sigmoid` so that `I - beta k k^T` has eigenvalue `1 - beta` in `[0, 1]`) cannot, and
# that doubling the range to `[-1, 1]` (`2a - 1`, `beta = 2 sigmoid`) can.
#
# This notebook trains the Mamba-style **diagonal** model and **DeltaNet** on parity (lengths
# 3-40) with both ranges, measures accuracy on longer sequences, and looks inside: the
# eigenvalues each model assigns to the tokens `0` and `1`.
#
# Set `LRNN_NOTEBOOK_SMALL=1` for a seconds-long run (the tests do).

# %%
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments.configs import Config, apply_preset
from experiments.train import evaluate_lengths, train

SMALL = os.environ.get("LRNN_NOTEBOOK_SMALL", "") not in ("", "0")
OUT = Path(tempfile.mkdtemp(prefix="lrnn_expressivity_")) if SMALL else Path("runs/expressivity")
MODELS = ("diagonal", "deltanet")
EIGENS = ("unit", "signed")


def config(model: str, eigen: str) -> Config:
    if SMALL:
        cfg = apply_preset(Config(task="parity", model=model), "tiny")
        return dataclasses.replace(cfg, eigen=eigen, steps=2, implementation="sequential",
                                   out=str(OUT / f"{model}_{eigen}"))
    cfg = apply_preset(Config(task="parity", model=model), "cpu")
    return dataclasses.replace(cfg, eigen=eigen, steps=800, warmup=80, ckpt_every=800,
                               out=str(OUT / f"{model}_{eigen}"))


# %% [markdown]
# ## Train the four models
# The `cpu` preset: 2 layers, d_model 32, AdamW with warmup and cosine decay, batches of
# sequences with lengths uniform in 3-40 and the loss at the last token only. Runs resume from
# their checkpoints in `runs/expressivity/` if re-executed.

# %%
trained = {}
for model_name in MODELS:
    for eigen in EIGENS:
        cfg = config(model_name, eigen)
        t = time.perf_counter()
        trained[model_name, eigen] = train(cfg)
        print(f"{model_name:9s} {eigen:6s} trained in {time.perf_counter() - t:5.1f} s")

# %% [markdown]
# ## Accuracy vs length
# Inside the training range every model fits the data; beyond it only the models with
# eigenvalues in `[-1, 1]` keep counting.

# %%
task0 = trained[MODELS[0], EIGENS[0]][1]
lengths = list(range(3, 25)) if SMALL else list(range(3, 257, 3))
per_length = 4 if SMALL else 16
accuracy = {}
for key, (model, task) in trained.items():
    accuracy[key] = evaluate_lengths(model, task, lengths, per_length=per_length, batch=256)

fig, axes = plt.subplots(1, len(MODELS), figsize=(11, 3.6), sharey=True)
for ax, model_name in zip(np.atleast_1d(axes), MODELS):
    for eigen in EIGENS:
        rng = "[0, 1]" if eigen == "unit" else "[-1, 1]"
        ax.plot(lengths, accuracy[model_name, eigen], label=f"eigenvalues in {rng}")
    ax.axvspan(*task0.train_sizes, color="0.9", label="training lengths")
    ax.axhline(0.5, ls="--", color="0.5", lw=1)
    ax.set_title(model_name)
    ax.set_xlabel("sequence length")
    ax.set_ylim(0.3, 1.02)
np.atleast_1d(axes)[0].set_ylabel("parity accuracy")
np.atleast_1d(axes)[0].legend(fontsize=8, loc="lower left")
fig.tight_layout()
plt.show()

test_lo = task0.test_sizes[0]
for key, acc in accuracy.items():
    acc = np.asarray(acc)
    beyond = acc[np.asarray(lengths) >= test_lo]
    print(f"{key[0]:9s} {key[1]:6s} mean accuracy beyond length {test_lo}: {beyond.mean():.3f}")

# %% [markdown]
# ## Looking inside: eigenvalues per input token
# For every token of a batch of parity strings we collect the first layer's transition
# eigenvalues: for the diagonal model the gates `a_t` (one per channel and state index), for
# DeltaNet the Householder eigenvalue `1 - beta_t` (one per head; the other eigenvalues of
# `I - beta k k^T` are 1). A model that counts mod 2 should send the eigenvalues of the tokens
# `1` towards `-1` and those of the tokens `0` towards `+1`.

# %%
tokens, _, _ = task0.sample(jax.random.key(7), 64, 40)
eig = {}
for key, (model, _) in trained.items():
    ev = np.asarray(jax.jit(lambda t, m=model: m.eigenvalues(t)[0])(tokens))  # layer 1
    tok = np.asarray(tokens)
    eig[key] = {b: ev[tok == b].ravel() for b in (0, 1)}

fig, axes = plt.subplots(len(MODELS), len(EIGENS), figsize=(10, 6), squeeze=False)
bins = np.linspace(-1, 1, 41)
for i, model_name in enumerate(MODELS):
    for j, eigen in enumerate(EIGENS):
        ax = axes[i, j]
        for b, color in ((0, "tab:blue"), (1, "tab:red")):
            ax.hist(eig[model_name, eigen][b], bins=bins, alpha=0.6, color=color, density=True,
                    label=f"token {b}")
        rng = "[0, 1]" if eigen == "unit" else "[-1, 1]"
        ax.set_title(f"{model_name}, eigenvalues in {rng}", fontsize=10)
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue (layer 1)")
axes[0, 0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The fraction of eigenvalues below -0.5, per token: only the signed models use negative
# eigenvalues, and they use them on the tokens that flip the parity.

# %%
for key, e in eig.items():
    f0, f1 = (float(np.mean(e[b] < -0.5)) for b in (0, 1))
    print(f"{key[0]:9s} {key[1]:6s}  P(eig < -0.5 | token 0) = {f0:.3f}   "
          f"P(eig < -0.5 | token 1) = {f1:.3f}   min over token 1 = {e[1].min():+.3f}")
    if key[1] == "unit":
        assert e[0].min() >= 0.0 and e[1].min() >= 0.0  # the range really is [0, 1]
