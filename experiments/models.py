"""The model registry: model name -> factory ``(cfg: Config, task: Task, *, rngs) -> Module``.

Protocol
--------
A factory receives the full experiment config (``experiments.configs.Config``; read the
fields you need, e.g. ``d_model``, ``layers``, ``heads``, ``eigen``, ``patch_size``) and the task
(``experiments.tasks`` protocol: ``kind``, ``vocab_size``, ``num_classes``, ``channels``). It
returns an ``nnx.Module`` mapping the task's ``inputs`` to float logits of shape
``labels.shape + (num_classes,)``: ``[B, T, C]`` for token tasks, ``[B, C]`` for image tasks.
The training loop splits it with ``nnx.split(model, nnx.Param, ...)``; only ``nnx.Param``
leaves are optimised.

Registering a model (e.g. from ``experiments/models_2d.py`` or ``lrnn/nn/...``)::

    from experiments.models import register_model

    @register_model("plstm")
    def _build(cfg, task, *, rngs):
        return PLSTMClassifier(..., rngs=rngs)

Modules listed in ``_OPTIONAL_MODULES`` are imported on first lookup so that their models
register themselves; a missing optional module is skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from flax import nnx

from lrnn.nn import MIXERS, SequenceModel

__all__ = ["MODELS", "register_model", "build_model", "model_names"]

MODELS: dict[str, Callable] = {}

# Modules that register further models when imported (2D models of the pLSTM work).
_OPTIONAL_MODULES = ("experiments.models_2d",)


def register_model(name: str):
    """Decorator registering a model factory under ``name``."""

    def deco(factory):
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return deco


def _sequence_factory(mixer: str):
    def build(cfg, task, *, rngs: nnx.Rngs):
        from experiments.configs import model_config

        if task.kind != "tokens":
            raise ValueError(
                f"model {mixer!r} needs a token task; task {task.name!r} is {task.kind!r}"
            )
        return SequenceModel(model_config(cfg), task.vocab_size, task.num_classes, rngs=rngs)

    build.__name__ = f"build_{mixer}"
    return build


for _name in MIXERS:
    register_model(_name)(_sequence_factory(_name))


def _load_optional() -> None:
    for mod in _OPTIONAL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def model_names() -> list[str]:
    _load_optional()
    return sorted(MODELS)


def build_model(cfg, task, *, rngs: nnx.Rngs) -> nnx.Module:
    """The model ``cfg.model`` for ``task``; unknown names raise listing the valid ones."""
    if cfg.model not in MODELS:
        _load_optional()
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; valid models: {', '.join(model_names())}")
    return MODELS[cfg.model](cfg, task, rngs=rngs)
