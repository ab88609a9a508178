"""The regular-language tasks: labels against plain-Python references, shapes, registry."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tasks import (
    TASKS,
    SequenceTask,
    Task,
    accuracy,
    get_task,
    masked_cross_entropy,
    task_names,
)
from experiments.train import eval_summary

SEQ_TASKS = ["parity", "modular_arithmetic", "modular_arithmetic_brackets", "cycle_navigation",
             "even_pairs"]


def reference_label(name: str, symbols: list[str]) -> int:
    if name == "parity":
        return sum(int(s) for s in symbols) % 2
    if name == "cycle_navigation":
        return sum({"=": 0, "+1": 1, "-1": -1}[s] for s in symbols) % 5
    if name == "even_pairs":
        pairs = sum(a != b for a, b in zip(symbols, symbols[1:]))
        return int(pairs % 2 == 0)
    # Python integer arithmetic with the usual precedence, then mod 5.
    return eval("".join(symbols)) % 5


@pytest.mark.parametrize("name", SEQ_TASKS)
def test_labels_match_python_reference(name):
    task = get_task(name)
    assert isinstance(task, Task)
    n = 256
    lengths = jnp.concatenate([jnp.array([1, 2, 3, 4, 7, 40]),
                               jax.random.randint(jax.random.key(0), (n - 6,), 1, 41)])
    x, y, m = jax.jit(task.sample_lengths, static_argnums=2)(jax.random.key(3), lengths, 40)
    x, y, m = np.asarray(x), np.asarray(y), np.asarray(m)
    assert x.shape == y.shape == m.shape == (n, 40)
    assert x.dtype == np.int32 and y.dtype == np.int32
    eff = np.asarray(task.effective_lengths(lengths))
    for i in range(40):
        L = eff[i]
        assert m[i].sum() == 1 and m[i, L - 1] == 1
        assert (x[i, L:] == task.pad_id).all() and (x[i, :L] < task.pad_id).all()
        symbols = task.decode(x[i]).split()
        assert len(symbols) == L
        assert y[i, L - 1] == reference_label(name, symbols), (name, symbols)
    # Every class occurs at the answer positions, none dominates.
    lab = y[m > 0]
    assert lab.size == n and lab.min() >= 0 and lab.max() < task.num_classes
    freq = np.bincount(lab, minlength=task.num_classes) / lab.size
    assert freq.min() > 0.4 / task.num_classes, freq


def test_modular_arithmetic_lengths_odd_and_brackets_balanced():
    task = get_task("modular_arithmetic")
    _, _, m = jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(0), 8, 30)
    assert (np.asarray(m).argmax(1) + 1 == 29).all()
    task = get_task("modular_arithmetic_brackets")
    x, _, m = jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(1), 64, 61)
    assert (np.asarray(m).argmax(1) + 1 == 61).all()
    opened = []
    for row in np.asarray(x):
        s = task.decode(row).replace(" ", "")
        assert len(s) == 61 and re.fullmatch(r"[0-9+\-*()]+", s)
        d = 0
        for ch in s:
            d += (ch == "(") - (ch == ")")
            assert d >= 0
        assert d == 0
        opened.append(s.count("("))
    assert max(opened) > 0  # brackets actually occur


@pytest.mark.parametrize("name", SEQ_TASKS)
def test_train_batch_lengths_in_range(name):
    task = get_task(name)
    task.train_sizes = (5, 20)
    x, y, m = jax.jit(task.train_batch, static_argnums=1)(jax.random.key(1), 128)
    assert x.shape == (128, 20)
    L = np.asarray(m).argmax(1) + 1
    assert L.min() >= 4 and L.max() <= 20  # odd-only tasks round 5.. down to 4 at most
    assert len(set(L.tolist())) > 5
    assert task.eval_sizes(7, 9) == [7, 8, 9]


def test_registry_unknown_name_lists_valid():
    assert set(SEQ_TASKS) <= set(task_names()) and set(TASKS) <= set(task_names())
    with pytest.raises(ValueError, match="valid tasks: .*parity"):
        get_task("parityy")


def test_loss_accuracy_and_scaled_accuracy():
    logits = jnp.array([[[2.0, 0.0], [0.0, 3.0]], [[0.0, 1.0], [5.0, 0.0]]])
    labels = jnp.array([[0, 0], [1, 1]])
    mask = jnp.array([[0.0, 1.0], [1.0, 1.0]])
    assert float(accuracy(logits, labels, mask)) == pytest.approx(1 / 3)
    ref = np.mean([np.log1p(np.exp(3.0)), np.log1p(np.exp(-1.0)), np.log1p(np.exp(5.0))])
    assert float(masked_cross_entropy(logits, labels, mask)) == pytest.approx(ref, rel=1e-6)
    s = eval_summary([40, 41], [1.0, 0.6], chance=0.5)
    assert s["mean_accuracy"] == pytest.approx(0.8) and s["scaled_accuracy"] == pytest.approx(0.6)
    s = eval_summary([40], [0.2], chance=0.2)
    assert s["scaled_accuracy"] == pytest.approx(0.0)


def test_sequence_task_validates_sizes():
    with pytest.raises(ValueError, match="train_sizes"):
        SequenceTask(train_sizes=(10, 3))
