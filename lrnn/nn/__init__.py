"""Flax NNX layers and models: sequence mixers over ``lrnn.ops``, blocks, and the model.

``MIXERS`` maps a mixer name to its constructor ``(cfg: ModelConfig, *, rngs) -> Module``;
``SequenceModel(cfg, vocab_size, num_classes, rngs=...)`` builds embedding -> blocks -> norm
-> head around the mixer named ``cfg.mixer``. Every mixer has ``init_state`` / ``step`` for
recurrent decoding, equal to its full-sequence output. (Models for other input kinds, e.g.
2D images, are registered in ``experiments/models.py``.)
"""

from lrnn.nn.config import ModelConfig
from lrnn.nn.layers import CausalConv1D, GatedMLP, l2_normalize, rope
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

__all__ = [
    "ModelConfig",
    "MIXERS",
    "make_mixer",
    "Block",
    "SequenceModel",
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
