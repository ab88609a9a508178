"""Synthetic tasks with jittable samplers, and the task registry.

The task protocol (what the training loop, the evaluation CLI and every model rely on)
---------------------------------------------------------------------------------------
A task is a small object with these attributes and methods (see :class:`Task`):

``name: str``
    Registry key (``--task NAME``).
``kind: str``
    ``"tokens"`` (inputs are int32 token ids ``[B, T]``) or ``"image"`` (inputs are float
    images ``[B, X, Y, C]``). Models read it to pick their input layer.
``vocab_size: int``
    Number of input token ids, padding included (``0`` for image tasks).
``num_classes: int``
    Number of output classes; models emit logits ``labels.shape + (num_classes,)``.
``channels: int``
    Image channels ``C`` (``0`` for token tasks).
``train_sizes: tuple[int, int]``
    Inclusive range of training sizes (sequence lengths; for images the side length, where a
    fixed size is ``(s, s)``).
``test_sizes: tuple[int, int]``
    Inclusive range of test sizes. :meth:`Task.eval_sizes` lists the sizes actually
    evaluated (every length for sequence tasks; image tasks may return a few sizes).
``chance: float``
    Accuracy of the best constant guess; ``scaled accuracy = (acc - chance) / (1 - chance)``.
``sample(key, batch, size) -> (inputs, labels, mask)``
    A batch of ``batch`` examples, all of size ``size`` (a static Python int). Jittable.
    Token tasks: ``inputs [B, T] int32``, ``labels [B, T] int32``, ``mask [B, T] float32``
    (1 where the loss and the accuracy are taken). Image tasks: ``inputs [B, X, Y, C]``
    float32, ``labels [B] int32`` (one label per image), ``mask [B]`` (ones).
``sample_lengths(key, lengths, size) -> (inputs, labels, mask)``
    Token tasks only: example ``i`` has length ``lengths[i] <= size`` and is padded to
    ``size`` with ``pad_id``; the mask is 1 only at its answer position(s). Models are causal,
    so padding after the answer does not change it. Image tasks need not implement it.
``train_batch(key, batch) -> (inputs, labels, mask)``
    One batch of the training distribution with a fixed shape (jittable). Token tasks: lengths
    uniform in ``train_sizes``, padded to the largest.

``preset_overrides(preset, model) -> dict`` (optional)
    Task-specific refinements of a named preset (``--preset cpu``), applied after the generic
    preset and before the command-line flags (see ``experiments.configs``).

Loss and accuracy are computed generically from ``(logits, labels, mask)``: masked cross
entropy, and the fraction of masked positions whose argmax equals the label. Sequence tasks
here follow the next-token format of Grazzi et al. (2025): the label sits at the last token
of each example and the mask selects only that position.

Registering a task
------------------
``TASKS`` maps names to zero-argument factories. Add an entry with::

    from experiments.tasks import register_task

    @register_task("arrow_pointing")
    def _make():
        return ArrowPointing()

``get_task(name)`` raises ``ValueError`` listing the valid names for an unknown one. Tasks
defined in other modules of this package are imported lazily by ``get_task`` /
``task_names`` through ``_OPTIONAL_MODULES`` (so a missing optional module never breaks the
rest).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from experiments.tasks.base import SequenceTask, Task, accuracy, masked_cross_entropy
from experiments.tasks.regular import (
    CycleNavigation,
    EvenPairs,
    ModularArithmetic,
    ModularArithmeticBrackets,
    Parity,
)

__all__ = [
    "Task",
    "SequenceTask",
    "TASKS",
    "register_task",
    "get_task",
    "task_names",
    "accuracy",
    "masked_cross_entropy",
    "Parity",
    "ModularArithmetic",
    "ModularArithmeticBrackets",
    "CycleNavigation",
    "EvenPairs",
]

TASKS: dict[str, Callable[[], Task]] = {}

# Modules of this package that register further tasks when imported (e.g. the 2D image task).
_OPTIONAL_MODULES = ("experiments.tasks.arrow_pointing",)


def register_task(name: str):
    """Decorator registering a zero-argument task factory under ``name``."""

    def deco(factory: Callable[[], Task]):
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = factory
        return factory

    return deco


register_task("parity")(Parity)
register_task("modular_arithmetic")(ModularArithmetic)
register_task("modular_arithmetic_brackets")(ModularArithmeticBrackets)
register_task("cycle_navigation")(CycleNavigation)
register_task("even_pairs")(EvenPairs)


def _load_optional() -> None:
    for mod in _OPTIONAL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # only a missing optional module is tolerated
            if e.name != mod:
                raise


def task_names() -> list[str]:
    """Sorted names of all registered tasks."""
    _load_optional()
    return sorted(TASKS)


def get_task(name: str) -> Task:
    """Build the task called ``name``; unknown names raise listing the valid ones."""
    if name not in TASKS:
        _load_optional()
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}")
    return TASKS[name]()
