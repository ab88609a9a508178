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

Families of tasks whose names carry a size (the group word problems ``z<n>`` and ``d<n>``) are
registered with ``register_family(pattern, factory, shown)``: ``factory(match)`` builds the
task for a name matching the regular expression ``pattern``.

Formats: a task may exist in more than one data format (``task_format``): ``"lrnn"`` is this
package's own; ``"grazzi"`` follows the public generator of Grazzi et al. (2025) for parity and
modular arithmetic (``experiments.tasks.grazzi``). ``get_task(name, task_format=...)`` picks one.

``get_task(name)`` raises ``ValueError`` listing the valid names for an unknown one. Tasks
defined in other modules of this package are imported lazily by ``get_task`` /
``task_names`` through ``_OPTIONAL_MODULES`` (so a missing optional module never breaks the
rest).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from experiments.tasks.base import SequenceTask, Task, accuracy, masked_cross_entropy
from experiments.tasks.groups import GroupWordProblem, get_group
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
    "register_family",
    "register_format",
    "TASK_FORMATS",
    "get_task",
    "task_names",
    "is_task",
    "accuracy",
    "masked_cross_entropy",
    "Parity",
    "ModularArithmetic",
    "ModularArithmeticBrackets",
    "CycleNavigation",
    "EvenPairs",
    "GroupWordProblem",
    "get_group",
]

TASKS: dict[str, Callable[[], Task]] = {}
# (compiled pattern, factory(match) -> Task, name shown in listings)
_FAMILIES: list[tuple[re.Pattern, Callable, str]] = []
# format name -> {task name -> factory}; "lrnn" is TASKS itself
_FORMATS: dict[str, dict[str, Callable[[], Task]]] = {}
TASK_FORMATS = ("lrnn", "grazzi")

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


def register_family(pattern: str, factory: Callable, shown: str) -> None:
    """Registers the tasks whose names match ``pattern`` (a full match); ``shown`` is the
    family's name in listings, e.g. ``"z<n>"``."""
    _FAMILIES.append((re.compile(pattern), factory, shown))


def register_format(task_format: str, name: str):
    """Decorator registering the factory of task ``name`` in data format ``task_format``."""
    if task_format not in TASK_FORMATS or task_format == "lrnn":
        raise ValueError(f"task formats are {TASK_FORMATS} ('lrnn' is the registry itself)")

    def deco(factory):
        _FORMATS.setdefault(task_format, {})[name] = factory
        return factory

    return deco


register_task("parity")(Parity)
register_task("modular_arithmetic")(ModularArithmetic)
register_task("modular_arithmetic_brackets")(ModularArithmeticBrackets)
register_task("cycle_navigation")(CycleNavigation)
register_task("even_pairs")(EvenPairs)
for _g in ("s3", "s4", "s5", "a4", "a5"):
    register_task(_g)(lambda _g=_g: GroupWordProblem(_g))
register_family(r"z(\d+)", lambda m: GroupWordProblem(f"Z{m.group(1)}"), "z<n>")
register_family(r"d(\d+)", lambda m: GroupWordProblem(f"D{m.group(1)}"), "d<n>")


def _load_optional() -> None:
    for mod in _OPTIONAL_MODULES + ("experiments.tasks.grazzi",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # only a missing optional module is tolerated
            if e.name != mod:
                raise


def task_names() -> list[str]:
    """Sorted names of all registered tasks (a family appears once, e.g. ``z<n>``)."""
    _load_optional()
    return sorted(TASKS) + [shown for _, _, shown in _FAMILIES]


def is_task(name: str) -> bool:
    """Whether ``get_task(name)`` would find a task (no task is built)."""
    _load_optional()
    return name in TASKS or any(p.fullmatch(str(name)) for p, _, _ in _FAMILIES)


def get_task(name: str, task_format: str = "lrnn") -> Task:
    """Build the task called ``name`` in data format ``task_format``.

    Unknown names raise ``ValueError`` listing the valid ones; so does a format the task does
    not have.
    """
    if task_format not in TASK_FORMATS:
        raise ValueError(f"unknown task format {task_format!r}; valid formats: "
                         f"{', '.join(TASK_FORMATS)}")
    if name not in TASKS or task_format != "lrnn":
        _load_optional()
    if task_format != "lrnn":
        table = _FORMATS.get(task_format, {})
        if name not in table:
            have = ", ".join(sorted(table)) or "none"
            raise ValueError(f"task {name!r} has no {task_format!r} format (tasks with it: "
                             f"{have}); use task_format 'lrnn'")
        return table[name]()
    if name in TASKS:
        return TASKS[name]()
    for pattern, factory, _ in _FAMILIES:
        m = pattern.fullmatch(str(name))
        if m is not None:
            try:
                return factory(m)
            except ValueError as e:
                raise ValueError(f"task {name!r}: {e}") from None
    raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}")
