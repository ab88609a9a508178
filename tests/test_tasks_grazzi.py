"""The Grazzi-format tasks: labels against plain-Python references, layout, grammar, registry."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tasks import SequenceTask, Task, get_task
from experiments.tasks.grazzi import (
    GrazziModularArithmetic,
    GrazziModularArithmeticBrackets,
    GrazziParity,
)

CLASSES = {
    "parity": GrazziParity,
    "modular_arithmetic": GrazziModularArithmetic,
    "modular_arithmetic_brackets": GrazziModularArithmeticBrackets,
}
SIZE = 40


def _sample(task, lengths, size=SIZE, seed=3):
    f = jax.jit(task.sample_lengths, static_argnums=2)
    x, y, m = f(jax.random.key(seed), jnp.asarray(lengths, jnp.int32), size)
    return np.asarray(x), np.asarray(y), np.asarray(m)


def _check_layout(task, x, y, m, n_inputs, size=SIZE):
    """Inputs are ``n_inputs`` non-pad tokens then pad; mask and label only at the last input."""
    assert x.shape == y.shape == m.shape == (len(n_inputs), size)
    assert x.dtype == np.int32 and y.dtype == np.int32 and m.dtype == np.float32
    for i, n in enumerate(n_inputs):
        assert (x[i, :n] != task.pad_id).all() and (x[i, n:] == task.pad_id).all()
        assert m[i].sum() == 1 and m[i, n - 1] == 1
        assert (y[i, np.arange(size) != n - 1] == task.pad_id).all()
        assert 0 <= y[i, n - 1] < task.num_classes


# --- plain-Python references ---------------------------------------------------------------------
def _parse_value(sym: list[str]) -> int:
    """Recursive descent with the usual precedence and unary minus (Python integers), mod 5."""
    pos = 0

    def peek():
        return sym[pos] if pos < len(sym) else None

    def eat(s=None):
        nonlocal pos
        tok = sym[pos]
        assert s is None or tok == s, (s, tok, sym)
        pos += 1
        return tok

    def expr():
        v = term()
        while peek() in ("+", "-"):
            v = v + term() if eat() == "+" else v - term()
        return v

    def term():
        v = unary()
        while peek() == "*":
            eat()
            v = v * unary()
        return v

    def unary():
        if peek() == "-":
            eat()
            return -unary()
        if peek() == "(":
            eat()
            v = expr()
            eat(")")
            return v
        return int(eat())

    v = expr()
    assert pos == len(sym), sym
    return v % 5


def _parse_grazzi(sym: list[str], ops=("+", "-")):
    """Strict parser of Grazzi's bracket grammar: E -> t | - t | ( t ) | ( - t ) | ( E op E ).

    Returns ``(value mod 5, forms)``; ``forms`` counts the short forms and the operators."""
    forms = collections.Counter()
    digits = set("01234")

    def node(i):
        if sym[i] in digits:
            forms["t"] += 1
            return int(sym[i]), i + 1
        if sym[i] == "-":
            assert sym[i + 1] in digits, sym
            forms["- t"] += 1
            return -int(sym[i + 1]), i + 2
        assert sym[i] == "(", sym
        if sym[i + 1] in digits and sym[i + 2] == ")":
            forms["( t )"] += 1
            return int(sym[i + 1]), i + 3
        if sym[i + 1] == "-" and sym[i + 2] in digits and sym[i + 3] == ")":
            forms["( - t )"] += 1
            return -int(sym[i + 2]), i + 4
        a, j = node(i + 1)
        op = sym[j]
        assert op in ops, (op, sym)
        forms[op] += 1
        b, k = node(j + 1)
        assert sym[k] == ")", sym
        return {"+": a + b, "-": a - b, "*": a * b}[op], k + 1

    v, end = node(0)
    assert end == len(sym), sym
    return v % 5, forms


# --- tests ----------------------------------------------------------------------------------------
def test_registry_and_constants():
    for name, cls in CLASSES.items():
        task = get_task(name, task_format="grazzi")
        assert type(task) is cls and isinstance(task, Task) and isinstance(task, SequenceTask)
        assert task.train_sizes == (3, 40) and task.test_sizes == (40, 256)
        assert type(get_task(name)) is not cls  # the lrnn format is unchanged
    p, a, b = (get_task(n, task_format="grazzi") for n in CLASSES)
    assert (p.vocab_size, p.num_classes, p.pad_id, p.chance) == (3, 3, 0, 0.5)
    assert (a.vocab_size, a.num_classes, a.pad_id) == (10, 10, 0)
    assert (b.vocab_size, b.num_classes, b.pad_id) == (12, 12, 11)
    assert a.chance == pytest.approx(0.2) and b.chance == pytest.approx(0.2)
    assert b.mult is False


def test_effective_lengths():
    p, a, b = (get_task(n, task_format="grazzi") for n in CLASSES)
    ls = jnp.array([1, 2, 3, 4, 5, 6, 39, 40, 256])
    assert np.asarray(p.effective_lengths(ls)).tolist() == [2, 2, 3, 4, 5, 6, 39, 40, 256]
    assert np.asarray(a.effective_lengths(ls)).tolist() == [3, 3, 3, 3, 5, 5, 39, 39, 255]
    assert np.asarray(b.effective_lengths(ls)).tolist() == [5, 5, 5, 5, 5, 6, 39, 40, 256]


def test_parity():
    task = GrazziParity()
    lengths = np.array([1, 2, 3, 4, 5, 17, 40, 41] + list(range(3, 41)) * 3)
    x, y, m = _sample(task, lengths)
    L = np.maximum(lengths, 2)
    _check_layout(task, x, y, m, L - 1)
    assert set(np.unique(x)) <= {0, 1, 2}
    for i in range(len(L)):
        bits = task.decode(x[i]).split()
        assert len(bits) == L[i] - 1 and set(bits) <= {"0", "1"}
        assert y[i, L[i] - 2] == 1 + bits.count("1") % 2
    lab = y[m > 0]
    assert 0.3 < np.mean(lab == 2) < 0.7


def test_modular_arithmetic():
    task = GrazziModularArithmetic()
    lengths = np.array([1, 2, 3, 4, 5, 6, 39, 40, 41] + list(range(3, 41)) * 4)
    x, y, m = _sample(task, lengths)
    L = np.maximum(lengths - (1 - lengths % 2), 3)
    assert (L % 2 == 1).all()
    _check_layout(task, x, y, m, L - 1)
    ops = collections.Counter()
    for i in range(len(L)):
        sym = task.decode(x[i]).split()
        assert len(sym) == L[i] - 1 and sym[-1] == "="
        expr = sym[:-1]
        assert all(s in "01234" for s in expr[::2]) and all(s in "+-*" for s in expr[1::2])
        ops.update(expr[1::2])
        # Python precedence, non-negative mod; the answer is the token id 5 + value.
        assert y[i, L[i] - 2] == 5 + eval("".join(expr)) % 5, sym
    assert set(ops) == {"+", "-", "*"}
    lab = y[m > 0]
    freq = np.bincount(lab, minlength=10)[5:] / lab.size
    assert freq.min() > 0.08, freq


def test_modular_arithmetic_token_ids():
    task = GrazziModularArithmetic()
    # Grazzi's example: "2 * 3 + 0 - 4 * 1 =" -> 2 (token 7)
    assert task.decode([7, 3, 8, 1, 5, 2, 9, 3, 6, 4, 0, 0]) == "2 * 3 + 0 - 4 * 1 ="
    x, y, m = _sample(task, [11], size=12)
    assert x[0, 9] == 4 and (x[0, 10:] == 0).all() and m[0, 9] == 1


@pytest.mark.parametrize("mult", [False, True])
def test_modular_arithmetic_brackets(mult):
    task = GrazziModularArithmeticBrackets()
    task.mult = mult
    lengths = np.array([1, 3, 4, 5, 6, 7, 8, 40, 42] + list(range(3, 41)) * 4)
    x, y, m = _sample(task, lengths)
    L = np.maximum(lengths, 5)
    _check_layout(task, x, y, m, L - 2)
    forms = collections.Counter()
    ops = ("+", "-", "*") if mult else ("+", "-")
    for i in range(len(L)):
        sym = task.decode(x[i]).split()
        assert len(sym) == L[i] - 2 and sym[-1] == "=" and "=" not in sym[:-1]
        expr = sym[:-1]
        assert len(expr) == L[i] - 3
        depth = 0
        for s in expr:
            depth += (s == "(") - (s == ")")
            assert depth >= 0
        assert depth == 0
        if not mult:
            assert "*" not in expr
        value, f = _parse_grazzi(expr, ops)
        forms.update(f)
        # The strict tree value and a generic precedence parser with unary minus agree.
        assert value == _parse_value(expr), expr
        assert y[i, L[i] - 3] == value, expr
    assert all(forms[k] > 0 for k in ("t", "- t", "( t )", "( - t )") + ops), forms
    assert "- -" in " ".join(task.decode(r) for r in x) or "+ -" in " ".join(
        task.decode(r) for r in x)
    lab = y[m > 0]
    freq = np.bincount(lab, minlength=12)[:5] / lab.size
    assert freq.min() > 0.08, freq


def test_brackets_short_forms_and_split():
    task = GrazziModularArithmeticBrackets()
    assert task.decode([8, 8, 2, 9, 5, 6, 1, 9, 10, 11, 11]) == "( ( 2 ) + - 1 ) ="
    # Expression lengths 2, 3, 4 have one form each; a length-7 root splits 1 + 3, 2 + 2, 3 + 1.
    lengths = np.array([5] * 8 + [6] * 8 + [7] * 8 + [10] * 400)
    x, _, _ = _sample(task, lengths, size=10)
    sym = [task.decode(r).split()[:-1] for r in x]
    for s in sym[:8]:
        assert s[0] == "-" and s[1] in "01234"
    for s in sym[8:16]:
        assert s[0] == "(" and s[2] == ")"
    for s in sym[16:24]:
        assert s[:2] == ["(", "-"] and s[3] == ")"
    left = collections.Counter()
    for s in sym[24:]:
        assert s[0] == "(" and s[-1] == ")" and len(s) == 7
        left[1 if s[2] in "+-" and s[1] in "01234" else 2 if s[3] in "+-" else 3] += 1
    assert sorted(left) == [1, 2, 3]
    assert min(left.values()) > 0.22 * 400, left


def test_train_batch_and_small_size():
    for name in CLASSES:
        task = get_task(name, task_format="grazzi")
        x, y, m = jax.jit(task.train_batch, static_argnums=1)(jax.random.key(1), 64)
        assert x.shape == y.shape == m.shape == (64, 40)
        n_in = np.asarray(m).argmax(1) + 1
        assert (np.asarray(m).sum(1) == 1).all()
        lo = {"parity": 2, "modular_arithmetic": 2, "modular_arithmetic_brackets": 3}[name]
        assert n_in.min() >= lo and n_in.max() <= 39 and len(set(n_in.tolist())) > 5
        assert task.eval_sizes(7, 9) == [7, 8, 9]
    with pytest.raises(ValueError, match="size"):
        GrazziModularArithmeticBrackets().sample(jax.random.key(0), 2, 2)
