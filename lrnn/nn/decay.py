"""Which parameters get weight decay: the usual rule for linear recurrent models.

Norm scales, biases, and the log / gate parameters of the recurrences (Mamba's ``A_log``,
``dt_proj.bias``, the skip ``D``, gate biases) get none, as in fla's and Mamba's training
code; every other weight (projections, short convolutions, embeddings, the head) does.

    tx = optax.adamw(1e-3, weight_decay=0.1, mask=lrnn.nn.decay_mask)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
"""

from __future__ import annotations

import jax

__all__ = ["NO_DECAY", "decay_mask"]

# a parameter whose path holds one of these names gets no weight decay
NO_DECAY = frozenset({"bias", "scale", "norm_scale", "A_log", "dt_bias", "skip", "D",
                      "gate_bias"})


def _names(path) -> set[str]:
    out = set()
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.add(str(getattr(k, attr)))
                break
    return out


def decay_mask(params):
    """``params`` (a pytree: ``nnx.state(model, nnx.Param)``, or what optax hands a ``mask``
    callable) -> the same tree of bools, True where the parameter gets weight decay."""
    return jax.tree_util.tree_map_with_path(lambda p, _: not (NO_DECAY & _names(p)), params)
