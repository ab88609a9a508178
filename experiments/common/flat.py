"""The train state as a few flat vectors: one per (dtype, weight-decay) group of parameters.

A tiny state-tracking model has ~40 parameter arrays and, with AdamW, ~120 optimiser arrays.
Passed to the jitted train step as they are, each call pays the host cost of every array
(``experiments/bench/train_step.py`` measures it as "dispatch"; benchmarks/train_step has the
numbers), and the optimiser becomes one small kernel per array. Packed, the step takes a
handful of arrays and the optimiser runs on whole vectors.

:class:`ParamLayout` packs a parameter tree into ``{group: vector}`` and back (slices and
reshapes: exact). The optimiser runs on the packed tree; its mu / nu become packed vectors too.
:meth:`ParamLayout.pack_state` / :meth:`unpack_state` convert a whole train state
``{params, opt, step}`` between the two forms, so checkpoints keep the unpacked (per-array)
format. Leading axes (a stacked ensemble's seed axis) are carried through.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ParamLayout"]


class ParamLayout:
    """Where each parameter array sits in its group's flat vector.

    Args:
      params: the parameter tree (unstacked: the shapes of one model).
      decays: ``path -> bool``, whether the array at this key path gets weight decay.
    """

    def __init__(self, params, decays: Callable[[tuple], bool] | None = None):
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        self.slots = []  # per leaf: (group, offset, shape)
        sizes: dict[str, int] = {}
        for path, leaf in flat:
            dec = True if decays is None else bool(decays(path))
            group = f"{'decay' if dec else 'nodecay'}_{jnp.dtype(leaf.dtype).name}"
            size = int(np.prod(leaf.shape))
            self.slots.append((group, sizes.get(group, 0), tuple(leaf.shape)))
            sizes[group] = sizes.get(group, 0) + size
        self.sizes = dict(sorted(sizes.items()))

    @property
    def groups(self) -> list[str]:
        return list(self.sizes)

    def decay_mask(self) -> dict[str, bool]:
        """The optimiser's weight-decay mask over the packed tree."""
        return {g: g.startswith("decay") for g in self.sizes}

    def pack(self, tree) -> dict[str, jax.Array]:
        """A tree with the parameters' structure -> ``{group: [..., size]}``."""
        leaves = self.treedef.flatten_up_to(tree)
        parts: dict[str, list] = {g: [] for g in self.sizes}
        for (group, _, shape), leaf in zip(self.slots, leaves):
            lead = leaf.shape[: leaf.ndim - len(shape)]
            parts[group].append(jnp.reshape(leaf, lead + (-1,)))
        return {g: jnp.concatenate(p, axis=-1) if len(p) > 1 else p[0]
                for g, p in parts.items()}

    def unpack(self, packed: dict):
        """``{group: [..., size]}`` -> the parameter tree (leading axes kept)."""
        leaves = []
        for group, off, shape in self.slots:
            vec = packed[group]
            n = int(np.prod(shape))
            leaves.append(jnp.reshape(vec[..., off:off + n], vec.shape[:-1] + shape))
        return self.treedef.unflatten(leaves)

    def _is_params(self, x) -> bool:
        return jax.tree_util.tree_structure(x) == self.treedef

    def _is_packed(self, x) -> bool:
        return isinstance(x, dict) and set(x) == set(self.sizes) and all(
            hasattr(v, "shape") for v in x.values())

    def pack_state(self, state: dict) -> dict:
        """``{params, opt, step}`` with per-array params and optimiser moments -> packed."""
        conv = lambda t: self.pack(t) if self._is_params(t) else t
        return {**state, "params": self.pack(state["params"]),
                "opt": jax.tree.map(conv, state["opt"], is_leaf=self._is_params)}

    def unpack_state(self, state: dict) -> dict:
        """The inverse of :meth:`pack_state` (checkpoints store this form)."""
        conv = lambda t: self.unpack(t) if self._is_packed(t) else t
        return {**state, "params": self.unpack(state["params"]),
                "opt": jax.tree.map(conv, state["opt"], is_leaf=self._is_packed)}
