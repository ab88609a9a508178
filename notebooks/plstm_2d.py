# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # pLSTM on a 2D grid: a recurrence, a monoid over columns, and how influence spreads
#
# A 2D pLSTM (Pöppel et al., 2025) keeps two matrix states per cell of a grid: `Cr`, which
# travels along x (to the right), and `Cd`, which travels along y (down). With `kv = k v^T`:
#
# ```
# Cr[x, y] = t_rr Cr[x-1, y] + t_rd Cd[x, y-1] + s_r kv
# Cd[x, y] = t_dd Cd[x, y-1] + t_dr Cr[x-1, y] + s_d kv
# o[x, y]  = (m_r Cr[x-1, y] + m_d Cd[x, y-1])^T q + d (q . k) v
# ```
#
# The gates (source `s`, transition `t`, mark `m`, direct `d`) are scalars per cell and head.
# `lrnn.grid.plstm2d` computes every output either cell by cell (`"sequential"`, the
# reference) or as an associative scan over columns (`"scan"`): the right-going states of
# column x are an affine function of those of column x-1, a `DENSE` element over the column.
#
# Set `LRNN_NOTEBOOK_SMALL=1` for the tiny configuration the tests run.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from lrnn import grid
from lrnn.grid import PLSTMGates, plstm2d

SMALL = os.environ.get("LRNN_NOTEBOOK_SMALL") == "1"
run = jax.jit(plstm2d, static_argnames=("implementation", "orientation"))
N = 12 if SMALL else 40  # grid side for the pictures
print("jax", jax.__version__, "| grid", N, "x", N)

# %% [markdown]
# ## How a source's influence spreads
#
# Put a source at one cell (s_r = s_d = 1 there, 0 elsewhere), use scalar keys, values and
# queries (dk = dv = 1, all ones) and marks 1, direct 0. Then `o[x, y]` is exactly the state
# that reaches cell (x, y) from the source: the "influence" of the source.
#
# - **P-mode** (`t_rr = t_rd = gamma alpha`, `t_dr = t_dd = gamma (1 - alpha)`): the mass a
#   cell receives is split between the two outgoing directions. The influence travels as a
#   directed beam whose angle is set by alpha, spreading like a random walk.
# - **D-mode** (`|t| <= 1`, one cross transition zero): with `t_dr = 0` the down-going state
#   runs straight down the column, and from every cell of it a right-going state branches off
#   and decays with `t_rr`: the influence diffuses over the whole quadrant.


# %%
def influence(gate_fn, n=N, src=(2, 2), orientation=0):
    """``o`` of a single unit source on an ``n x n`` grid (dk = dv = 1, marks 1, direct 0)."""
    shape = (1, n, n, 1)
    ones = jnp.ones((*shape, 1))
    s = jnp.zeros(shape).at[0, src[0], src[1], 0].set(1.0)
    t_rr, t_rd, t_dr, t_dd = gate_fn(shape)
    one, zero = jnp.ones(shape), jnp.zeros(shape)
    g = PLSTMGates(s, s, t_rr, t_rd, t_dr, t_dd, one, one, zero)
    return np.asarray(run(ones, ones, ones, g, orientation=orientation))[0, :, :, 0, 0]


def p_mode(alpha, gamma=0.99):
    def fn(shape):
        tr, td = jnp.full(shape, gamma * alpha), jnp.full(shape, gamma * (1 - alpha))
        return tr, tr, td, td

    return fn


def d_mode(t_straight=0.9, t_cross=0.6):
    def fn(shape):
        full = lambda a: jnp.full(shape, a)
        return full(t_straight), full(t_cross), full(0.0), full(t_straight)

    return fn


panels = [
    ("P-mode, alpha = 0.5", p_mode(0.5)),
    ("P-mode, alpha = 0.8", p_mode(0.8)),
    ("P-mode, alpha = 0.2", p_mode(0.2)),
    ("D-mode, t = 0.9, t_rd = 0.6", d_mode()),
]
fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8))
for ax, (title, fn) in zip(axes, panels):
    im = ax.imshow(influence(fn).T, origin="upper", cmap="magma")
    ax.set_title(title)
    ax.set_xlabel("x (r direction)")
    ax.set_ylabel("y (d direction)")
    fig.colorbar(im, ax=ax, fraction=0.046)
fig.suptitle("influence of a unit source at (2, 2)")
fig.tight_layout()
plt.show()

# %% [markdown]
# In P-mode the total mass on each anti-diagonal is conserved (times gamma per step), so the
# beam neither explodes nor vanishes with distance; in D-mode the influence decays
# geometrically with the distance along each axis. A layer runs four orientations (flips of
# the grid); here a source in the middle of the grid, P-mode, all four summed:

# %%
mid = (N // 2, N // 2)
maps = [influence(p_mode(0.5), src=mid, orientation=o) for o in range(4)]
fig, axes = plt.subplots(1, 5, figsize=(18, 3.6))
for o, (ax, m) in enumerate(zip(axes, maps)):
    fx, fy = grid.ORIENTATIONS[o]
    ax.imshow(m.T, cmap="magma")
    ax.set_title(f"orientation {o}: {'-' if fx else '+'}x {'-' if fy else '+'}y")
axes[-1].imshow(sum(maps).T, cmap="magma")
axes[-1].set_title("all four")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The column monoid
#
# Inside column x, `Cd` is a 1D recurrence along y driven by `t_dr Cr[x-1, .] + s_d kv`.
# Writing it with the strictly lower-triangular transfer matrix
# `L[y, j] = t_dd[j+1] ... t_dd[y-1]` (a cumulative product along y) gives
#
# `Cr[x, .] = M_x Cr[x-1, .] + b_x`, with `M_x = diag(t_rr) + diag(t_rd) L diag(t_dr)`.
#
# `M_x` is `Y x Y` and lower triangular: the right-going state at row y depends on the
# incoming states of rows `<= y` (a path may go down the column before it turns right).
# Composing `Affine(M_x, b_x)` over x is `lrnn.scan(DENSE, ..., axis=x)`.

# %%
rng = np.random.default_rng(0)
Y = 8
t = lambda: jnp.asarray(rng.uniform(-1, 1, Y), jnp.float32)
t_rr, t_rd, t_dr, t_dd = t(), t(), t(), t()
L = grid._transfer_matrix(t_dd)
M = jnp.diag(t_rr) + t_rd[:, None] * L * t_dr[None, :]
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
for ax, (name, mat) in zip(axes, [("L (transfer along y)", L), ("M_x (column element)", M)]):
    lim = float(jnp.abs(mat).max())
    ax.imshow(mat, cmap="RdBu", vmin=-lim, vmax=lim)
    ax.set_title(name)
    ax.set_xlabel("incoming row j")
    ax.set_ylabel("row y")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Scan vs sequential
#
# Both implementations against each other and against a float64 NumPy double loop, forward
# and gradients, with unconstrained gates in [-1, 1] (negative transitions included).


# %%
def numpy_reference(q, k, v, g):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = PLSTMGates(*(np.asarray(a, np.float64) for a in g))
    B, X, Y, H, dk = q.shape
    Cr = np.zeros((B, X + 1, Y + 1, H, dk, v.shape[-1]))  # padded by one: zero states off-grid
    Cd = np.zeros_like(Cr)
    o = np.zeros(v.shape)
    for x in range(X):
        for y in range(Y):
            G = lambda a: a[:, x, y, :, None, None]  # noqa: B023
            kv = k[:, x, y, :, :, None] * v[:, x, y, :, None, :]
            cr_in, cd_in = Cr[:, x, y + 1], Cd[:, x + 1, y]
            read = G(g.m_r) * cr_in + G(g.m_d) * cd_in
            o[:, x, y] = np.einsum("bhkv,bhk->bhv", read, q[:, x, y])
            o[:, x, y] += (g.d[:, x, y] * (q[:, x, y] * k[:, x, y]).sum(-1))[..., None] * v[:, x, y]
            Cr[:, x + 1, y + 1] = G(g.t_rr) * cr_in + G(g.t_rd) * cd_in + G(g.s_r) * kv
            Cd[:, x + 1, y + 1] = G(g.t_dd) * cd_in + G(g.t_dr) * cr_in + G(g.s_d) * kv
    return o


B, X, Y, H, dk, dv = (1, 5, 7, 2, 3, 2) if SMALL else (2, 16, 12, 4, 8, 8)
f32 = lambda a: jnp.asarray(a, jnp.float32)
q, k, v = (f32(rng.normal(size=(B, X, Y, H, d))) for d in (dk, dk, dv))
gates = PLSTMGates(*f32(rng.uniform(-1, 1, (9, B, X, Y, H))))
ref = numpy_reference(q, k, v, gates)
rel = lambda a, b: float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))

loss = lambda impl: jax.jit(
    jax.value_and_grad(
        lambda q, k, v, g: jnp.sum(plstm2d(q, k, v, g, implementation=impl) ** 2),
        argnums=(0, 1, 2, 3),
    )
)
outs = {impl: run(q, k, v, gates, implementation=impl) for impl in ("sequential", "scan")}
grads = {impl: loss(impl)(q, k, v, gates)[1] for impl in ("sequential", "scan")}
grad_err = max(
    rel(a, np.asarray(b))
    for a, b in zip(jax.tree.leaves(grads["scan"]), jax.tree.leaves(grads["sequential"]))
)
print(f"grid {X} x {Y}, B={B}, H={H}, dk={dk}, dv={dv}")
print(f"forward  sequential vs float64 loop: {rel(outs['sequential'], ref):.2e}")
print(f"forward  scan       vs float64 loop: {rel(outs['scan'], ref):.2e}")
print(f"gradient scan vs sequential (worst input): {grad_err:.2e}")
assert rel(outs["scan"], ref) < 1e-5 and grad_err < 1e-4

# %% [markdown]
# The scan has depth `O(log X)` in the columns (plus `O(log Y)` for the cumulative products)
# at the price of `O(Y^2 dk dv)` work per column instead of `O(Y dk dv)`: the right trade on
# an accelerator, where the sequential loop of `X Y` tiny steps is latency bound. On a CPU
# and the small grids of patch models the loop is faster, which is what
# `implementation="auto"` picks there.
