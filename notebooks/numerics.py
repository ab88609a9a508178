# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Numerics: scan vs chunkwise
#
# Every op in `lrnn.ops` has several implementations that compute the same recurrence in a
# different order: `"sequential"` (one token at a time, the reference), `"scan"`
# (`lrnn.scan`, an associative scan over per-token affine maps) and `"chunked"` (closed forms
# inside chunks, a loop over chunk summaries). In exact arithmetic they agree; in float32
# and bfloat16 they round differently. This notebook measures how far each one is from a
# float64 reference, for outputs, final states and gradients, as the sequence grows.
#
# Set `LRNN_NOTEBOOK_SMALL=1` for a tiny configuration (the tests do).

# %%
import os

import jax
import numpy as np

from lrnn import numerics, ops

SMALL = os.environ.get("LRNN_NOTEBOOK_SMALL") == "1"
# the small configuration (for the tests) compiles as little as possible: each
# (implementation, dtype) costs one gradient compile
LENGTHS = [12] if SMALL else [64, 256, 1024, 4096]
IMPLS = ["sequential", "chunked"] if SMALL else ["sequential", "scan", "chunked"]
DTYPES = ["bfloat16"] if SMALL else ["float32", "bfloat16"]
SHAPES = dict(heads=1, dk=4, dv=4) if SMALL else dict(heads=2, dk=16, dv=16)
CHUNK = 8 if SMALL else 64
print(jax.__version__, jax.default_backend(), "small" if SMALL else "full")

# %% [markdown]
# ## The inputs
# `numerics.random_inputs` draws inputs with **negative eigenvalues**: gates are
# `+-U(gate_low, 1)` with a 30% chance of a minus sign, Householder step sizes `beta` are
# uniform in [0, 2] (so `1 - beta`, the eigenvalue along the key, covers [-1, 1]), keys
# are unit-norm.

# %%
x = numerics.random_inputs("delta_product", length=8, n_h=2, **SHAPES)
print({k: v.shape for k, v in x.items()})
print("fraction of negative gates:", float(np.mean(x["gate"] < 0)))
print("beta range:", float(x["beta"].min()), float(x["beta"].max()))

# %% [markdown]
# ## One comparison by hand
# The sequential implementation in float64 is the reference; here the chunked form in
# float32 against it, on the same inputs.

# %%
import jax.numpy as jnp  # noqa: E402

from lrnn import _compat  # noqa: E402

with _compat.enable_x64():
    o64, S64 = numerics.run_op("delta_product", {k: jnp.asarray(v) for k, v in x.items()},
                               "sequential")
    o64, S64 = np.asarray(o64), np.asarray(S64)
o32, S32 = numerics.run_op("delta_product",
                           {k: jnp.asarray(v, jnp.float32) for k, v in x.items()},
                           "chunked", chunk_size=4)
print("output rel. error:", np.linalg.norm(o32 - o64) / np.linalg.norm(o64))
print("state  rel. error:", np.linalg.norm(S32 - S64) / np.linalg.norm(S64))

# %% [markdown]
# ## The table
# `numerics.compare` does this for every implementation, dtype and length, and also
# compares the gradients of every input (of a fixed random linear function of the outputs
# and final state). The reference is computed on the inputs rounded to the dtype under test,
# so the numbers show each implementation's arithmetic, not the rounding of its inputs.

# %%
table = numerics.compare("delta_product", IMPLS, LENGTHS, DTYPES, chunk_size=CHUNK, n_h=2,
                         **SHAPES)
print(table.markdown())

# %% [markdown]
# ## Error vs length
# One line per implementation and dtype (solid float32, dashed bfloat16). In bfloat16
# the outputs carry bfloat16's own rounding (about `2^-9`), while states and all internal
# sums stay in float32, so the final-state error is far below the output error.

# %%
fig = table.plot()

# %% [markdown]
# ## Gated linear attention with per-key gates
# The chunked form takes the gate products in log space with the sign apart, so negative
# and near-zero gates cost nothing in accuracy.

# %%
gla = numerics.compare("gated_linear_attention", ["sequential", "chunked"], LENGTHS,
                       ["float32"], chunk_size=CHUNK, gate="key", grads=not SMALL, **SHAPES)
print(gla.markdown())
worst = max(max(r["output"], r["final_state"], r.get("grad", 0.0)) for r in gla.rows)
print("worst error:", worst)

# %% [markdown]
# ## From the command line
# ```
# python -m lrnn.numerics --op delta_product --lengths 64,256,1024,4096 \
#     --dtypes float32,bfloat16 --out results/numerics
# ```
# writes `numerics_delta_product.csv`, `.md` and `.png` into `results/numerics`.

# %%
print(ops.IMPLEMENTATIONS)
