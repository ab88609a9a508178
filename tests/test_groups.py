"""Group word problems: the groups' axioms and orders, labels against a plain loop over
permutations, the held-out split, the registry, and the per-token evaluation record."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.tasks import get_task, is_task, task_names
from experiments.tasks.groups import GroupWordProblem, get_group, word_hash
from experiments.train import per_token_summary, wilson

ORDERS = {"S3": 6, "S4": 24, "A4": 12, "A5": 60, "S5": 120, "Z5": 5, "Z60": 60, "Z2": 2,
          "D3": 6, "D4": 8, "D7": 14}


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_group_axioms_and_order(name):
    g = get_group(name)
    n, P, M = g.order, g.perms, g.table
    assert n == ORDERS[name] and P.shape == (n, g.degree) and M.shape == (n, n)
    assert (P[0] == np.arange(g.degree)).all()  # row 0 is the identity
    assert len({tuple(r) for r in P.tolist()}) == n  # distinct permutations
    for row in P:
        assert sorted(row.tolist()) == list(range(g.degree))
    # table[a, b] = index of perms[a] o perms[b], (p o q)[i] = p[q[i]]
    for a, b in itertools.product(range(n), repeat=2):
        assert (P[M[a, b]] == P[a][P[b]]).all()
    assert (M[0] == np.arange(n)).all() and (M[:, 0] == np.arange(n)).all()  # identity
    assert all(sorted(r) == list(range(n)) for r in M.tolist())  # Latin square: inverses
    # associativity
    idx = np.arange(n)
    assert (M[M[:, :, None], idx[None, None, :]] == M[idx[:, None, None], M[None, :, :]]).all()
    inv = g.inverse
    assert (M[idx, inv] == 0).all() and (M[inv, idx] == 0).all()


def test_group_families():
    for name in ("A4", "A5"):  # even permutations only
        g = get_group(name)
        inversions = [sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p)))
                      for p in g.perms.tolist()]
        assert all(k % 2 == 0 for k in inversions)
    assert (get_group("Z7").table == get_group("Z7").table.T).all()  # abelian
    assert not (get_group("D4").table == get_group("D4").table.T).all()  # not abelian
    assert not (get_group("S3").table == get_group("S3").table.T).all()
    # lexicographic order of the one-line forms (as DeltaProduct's generate_data.py lists them)
    assert [tuple(p) for p in get_group("S3").perms.tolist()] == sorted(
        itertools.permutations(range(3)))


@pytest.mark.parametrize("bad", ["S6", "A3", "Q8", "D2", "Z1", "s", "", "Z5000"])
def test_bad_group_names_list_the_valid_ones(bad):
    with pytest.raises(ValueError, match="valid groups: S3, S4, S5, A4, A5, Z<n>, D<n>"):
        get_group(bad)


def _reference_labels(group, tokens) -> list[int]:
    """Prefix products by composing permutations in a plain loop: p <- perms[g] o p."""
    codes = {tuple(p): i for i, p in enumerate(group.perms.tolist())}
    p = list(range(group.degree))
    out = []
    for g in tokens:
        q = group.perms[g].tolist()
        p = [q[p[i]] for i in range(group.degree)]  # (q o p)[i] = q[p[i]]: later after earlier
        out.append(codes[tuple(p)])
    return out


@pytest.mark.parametrize("name", ["s3", "a5", "s5", "z60", "d5"])
def test_labels_match_a_plain_loop(name):
    task = get_task(name)
    x, y, m = jax.jit(task.sample_lengths, static_argnums=2)(
        jax.random.key(0), jnp.array([9, 17, 3, 17]), 17)
    x, y, m = map(np.asarray, (x, y, m))
    for i, L in enumerate([9, 17, 3, 17]):
        assert (m[i, :L] == 1).all() and (m[i, L:] == 0).all()
        assert (x[i, L:] == task.pad_id).all() and (x[i, :L] < task.group.order).all()
        assert y[i, :L].tolist() == _reference_labels(task.group, x[i, :L].tolist())
    assert task.vocab_size == task.group.order + 1 and task.num_classes == task.group.order
    assert task.chance == pytest.approx(1 / task.group.order)


def test_tokens_are_uniform_and_train_batches_fixed_length():
    task = get_task("s3")
    task.train_sizes = (32, 32)
    x, y, m = task.train_batch(jax.random.key(1), 256)
    assert x.shape == (256, 32) and float(m.min()) == 1.0
    counts = np.bincount(np.asarray(x).ravel(), minlength=6) / x.size
    assert np.abs(counts - 1 / 6).max() < 0.02


def test_registry_names_and_errors():
    for name in ("s3", "s4", "s5", "a4", "a5", "z5", "z60", "d4"):
        assert is_task(name)
        assert isinstance(get_task(name), GroupWordProblem)
    assert "z<n>" in task_names() and "d<n>" in task_names()
    with pytest.raises(ValueError, match="valid tasks: .*s3.*z<n>"):
        get_task("s7x")
    with pytest.raises(ValueError, match="task 'd2': .*D<n> needs n >= 3"):
        get_task("d2")


def test_holdout_split_is_fixed_and_disjoint():
    task = GroupWordProblem("A5", train_sizes=(2, 2), test_sizes=(2, 2), holdout=0.2)
    words = jnp.asarray(np.stack(np.meshgrid(np.arange(60), np.arange(60)), -1).reshape(-1, 2))
    held = np.asarray(task.held_out(words, jnp.full((3600,), 2)))
    assert abs(held.mean() - 0.2) < 0.02
    x, _, _ = task.train_batch(jax.random.key(0), 512)
    assert not np.asarray(task.held_out(x, jnp.full((512,), 2))).any()
    x, _, _ = task.sample(jax.random.key(0), 512, 2)
    assert np.asarray(task.held_out(x, jnp.full((512,), 2))).all()
    x, _, _ = task.sample_lengths(jax.random.key(0), jnp.full((512,), 2), 2, side="all")
    assert 0.1 < np.asarray(task.held_out(x, jnp.full((512,), 2))).mean() < 0.3
    # the hash ignores padding and depends on the length
    a = word_hash(jnp.array([[3, 4, 9, 9]]), jnp.array([2]))
    b = word_hash(jnp.array([[3, 4, 0, 0]]), jnp.array([2]))
    c = word_hash(jnp.array([[3, 4, 0, 0]]), jnp.array([3]))
    assert int(a[0]) == int(b[0]) != int(c[0])
    with pytest.raises(ValueError, match="holdout"):
        GroupWordProblem("S3", holdout=1.0)
    # too few words of a length for the split: refused, not sampled forever
    small = GroupWordProblem("S3", holdout=0.1)
    with pytest.raises(ValueError, match="no word of length 1 falls on the held-out side"):
        small.check_split([1, 2, 3])
    task.check_split([2, 3, 20])  # A5 at SLiCE's lengths


def test_wilson_interval_known_values():
    lo, hi = wilson(0, 10)
    assert float(lo) == 0.0 and float(hi) == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(5, 10)
    assert float(lo) == pytest.approx(0.2366, abs=1e-4)
    assert float(hi) == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(256, 256)
    assert float(hi) == 1.0 and float(lo) == pytest.approx(0.98524, abs=1e-4)


def test_per_token_summary():
    n = 100
    hits = np.array([100, 90, 80, 50])
    prefix = np.array([100, 90, 70, 20])
    rec = per_token_summary([1, 2, 3, 4], hits, prefix, n, chance=1 / 6)
    assert rec["accuracy"] == [1.0, 0.9, 0.8, 0.5]
    assert rec["sequence_accuracy"] == [1.0, 0.9, 0.7, 0.2]
    assert rec["length_90"] == 2 and rec["sequences"] == n and rec["metric"] == "per_token"
    lo, hi = rec["sequence_accuracy_ci"]
    assert all(a <= s <= b for a, s, b in zip(lo, rec["sequence_accuracy"], hi))
    assert rec["mean_accuracy"] == pytest.approx(0.8)
    assert rec["scaled_accuracy"] == pytest.approx((0.8 - 1 / 6) / (5 / 6), abs=1e-6)
