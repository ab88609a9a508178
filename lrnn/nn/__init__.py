"""Flax NNX layers and models: sequence mixers over ``lrnn.ops``, blocks, and the model.

The layers, with explicit keyword constructors (and ``from_config(cfg, rngs)``):
``DeltaNet`` (``n_h > 1``: DeltaProduct), ``GLA``, ``Diagonal`` (Mamba-style), ``SLiCE`` and
the 2D ``PLSTM2D``. The sequence layers take ``layer(x, *, state=None, return_state=False)``
and decode with ``init_state(batch)`` / ``step(x_t, state)`` (:mod:`lrnn.nn.recurrent`).

``MIXERS`` maps a mixer name to its constructor ``(cfg: ModelConfig, *, rngs) -> Module``;
``SequenceModel(cfg, vocab_size, num_classes, rngs=...)`` builds embedding -> blocks -> norm
-> head around the mixer named ``cfg.mixer``; ``CausalLM(vocab_size, d_model, [layer, ...],
rngs=...)`` (:mod:`lrnn.nn.lm`) is a next-token model over a list of built layers (hybrids
welcome) with ``generate(prompt, steps, key=, temperature=)``; ``decay_mask`` (an optax
``mask``) exempts norms, biases and the log / gate parameters from weight decay. Every mixer has
``init_state`` / ``step`` for recurrent decoding, equal to its full-sequence output. (Models
for other input kinds, e.g. 2D images, are registered in ``experiments/models.py``.)
"""

from lrnn.nn.config import ModelConfig
from lrnn.nn.decay import NO_DECAY, decay_mask
from lrnn.nn.layers import CausalConv1D, GatedMLP, l2_normalize, rope
from lrnn.nn.lm import CausalLM
from lrnn.nn.mixers import (
    MIXERS,
    AttentionMixer,
    DeltaProductMixer,
    DiagonalMixer,
    GLAMixer,
    LSTMMixer,
    SliceMixer,
)
from lrnn.nn.model import Block, SequenceModel, make_mixer
from lrnn.nn.plstm import PLSTM2D
from lrnn.nn.recurrent import GLA, DeltaNet, Diagonal, SLiCE

__all__ = [
    "DeltaNet",
    "GLA",
    "Diagonal",
    "SLiCE",
    "PLSTM2D",
    "ModelConfig",
    "MIXERS",
    "make_mixer",
    "Block",
    "SequenceModel",
    "CausalLM",
    "decay_mask",
    "NO_DECAY",
    "DiagonalMixer",
    "GLAMixer",
    "DeltaProductMixer",
    "SliceMixer",
    "LSTMMixer",
    "AttentionMixer",
    "GatedMLP",
    "CausalConv1D",
    "l2_normalize",
    "rope",
]
