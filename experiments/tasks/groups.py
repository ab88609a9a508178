"""Finite groups as permutation groups, and their word problems as token tasks.

A group word problem (Merrill et al. 2024; Siems et al. 2025, DeltaProduct; Walker et al. 2025,
SLiCE): the tokens are group elements ``g_0, g_1, ...`` drawn uniformly, and the label at every
position ``t`` is the index of the product ``g_t o g_{t-1} o ... o g_0``: later elements act
after earlier ones, as lrnn's monoids compose (``(A2, b2) o (A1, b1)``). A model that solves it
tracks the state of a finite automaton whose transition monoid is the group; ``S5`` and ``A5``
are not solvable, so no constant-depth circuit family does (the "illusion of state").

Groups (:func:`get_group`): ``S3, S4, S5`` (symmetric), ``A4, A5`` (alternating), ``Z<n>``
(cyclic, order n) and ``D<n>`` (dihedral, the symmetries of the n-gon, order 2n). Each is a
:class:`Group` of permutations of ``degree`` points; row 0 of ``perms`` is the identity, and the
elements of ``S<n>`` / ``A<n>`` are listed in the lexicographic order of their one-line form
(DeltaProduct's ``generate_data.py`` lists them so too).

Composition: ``(p o q)[i] = p[q[i]]`` (``q`` acts first); ``table[a, b]`` is the index of
``perms[a] o perms[b]``. DeltaProduct's labels multiply new elements on the right
(``x_0 x_1 ... x_t``); the word problem is the same up to reading each word's elements in the
other order, which is a bijection of the data (same difficulty, mirrored labels).
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from experiments.tasks.base import SequenceTask

__all__ = [
    "word_hash",
    "Group",
    "get_group",
    "group_names",
    "GroupWordProblem",
    "GROUP_PATTERNS",
    "prefix_products",
]

GROUP_PATTERNS = ("S3", "S4", "S5", "A4", "A5", "Z<n>", "D<n>")
# Sizes beyond which the multiplication table ([n, n] int32) stops being small.
_MAX_ORDER = 1024


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """A finite group given by permutations.

    Attributes:
      name: e.g. ``"S5"``.
      perms: int32 ``[n, degree]``; row ``a`` is the one-line form of element ``a``
        (``i -> perms[a, i]``); row 0 is the identity.
      table: int32 ``[n, n]``; ``table[a, b]`` is the index of ``perms[a] o perms[b]``.
    """

    name: str
    perms: np.ndarray
    table: np.ndarray

    @property
    def order(self) -> int:
        return int(self.perms.shape[0])

    @property
    def degree(self) -> int:
        return int(self.perms.shape[1])

    @property
    def inverse(self) -> np.ndarray:
        """``[n]``: the index of each element's inverse."""
        return np.argmax(self.table == 0, axis=1).astype(np.int32)

    def index(self, perm) -> int:
        """The index of a permutation given in one-line form."""
        hits = np.nonzero((self.perms == np.asarray(perm)[None]).all(axis=1))[0]
        if not len(hits):
            raise ValueError(f"{perm} is not an element of {self.name}")
        return int(hits[0])

    def __repr__(self) -> str:
        return f"Group({self.name}, order={self.order}, degree={self.degree})"


def _from_perms(name: str, perms) -> Group:
    perms = np.asarray(perms, np.int32)
    n, deg = perms.shape
    if not (perms[0] == np.arange(deg)).all():
        raise AssertionError(f"{name}: row 0 must be the identity")
    # The fewest leading points whose images tell the elements apart (2 for Z / D, up to
    # degree - 1 for S / A): composing only those keeps the table's cost at n^2 * base.
    base = next(b for b in range(1, deg + 1) if len(np.unique(perms[:, :b], axis=0)) == n)
    radix = deg ** np.arange(base, dtype=np.int64)
    codes = perms[:, :base].astype(np.int64) @ radix
    order = np.argsort(codes)
    # (p o q)[i] = p[q[i]]: the images of the base points under perms[a] o perms[b]
    composed = perms[:, perms[:, :base]].astype(np.int64) @ radix  # [n (a), n (b)]
    table = order[np.searchsorted(codes[order], composed)].astype(np.int32)
    return Group(name=name, perms=perms, table=table)


def _parity(p) -> int:
    """0 for an even permutation, 1 for an odd one (by counting inversions)."""
    p = list(p)
    return sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p))) % 2


def _symmetric(n: int, even_only: bool = False) -> list[tuple[int, ...]]:
    perms = itertools.permutations(range(n))  # lexicographic, identity first
    return [p for p in perms if not even_only or _parity(p) == 0]


def _cyclic(n: int) -> list[list[int]]:
    return [[(i + r) % n for i in range(n)] for r in range(n)]  # rotation by r


def _dihedral(n: int) -> list[list[int]]:
    rot = [[(i + r) % n for i in range(n)] for r in range(n)]
    ref = [[(r - i) % n for i in range(n)] for r in range(n)]  # reflections i -> r - i
    return rot + ref


def group_names() -> list[str]:
    """The accepted names (``Z<n>`` and ``D<n>`` stand for every n)."""
    return list(GROUP_PATTERNS)


def _bad_name(name, why: str = "") -> ValueError:
    extra = f" ({why})" if why else ""
    return ValueError(
        f"unknown group {name!r}{extra}; valid groups: {', '.join(GROUP_PATTERNS)} "
        "(e.g. Z5, Z60, D4)"
    )


def get_group(name: str) -> Group:
    """The group called ``name`` (case-insensitive): S3, S4, S5, A4, A5, Z<n>, D<n>.

    Raises:
      ValueError: an unknown name (the message lists the valid ones), or a size out of range
        (``Z<n>`` needs n >= 2, ``D<n>`` n >= 3; orders above 1024 are refused).
    """
    if not isinstance(name, str):
        raise TypeError(f"group name must be a str, got {type(name).__name__}")
    m = re.fullmatch(r"([SAZD])(\d+)", name.strip().upper())
    if m is None:
        raise _bad_name(name)
    kind, n = m.group(1), int(m.group(2))
    canon = f"{kind}{n}"
    if kind in "SA":
        if canon not in ("S3", "S4", "S5", "A4", "A5"):
            raise _bad_name(name, "symmetric and alternating groups: S3, S4, S5, A4, A5")
        return _from_perms(canon, _symmetric(n, even_only=kind == "A"))
    order = n if kind == "Z" else 2 * n
    lo = 2 if kind == "Z" else 3
    if n < lo:
        raise _bad_name(name, f"{kind}<n> needs n >= {lo}")
    if order > _MAX_ORDER:
        raise _bad_name(name, f"order {order} is above {_MAX_ORDER}")
    return _from_perms(canon, _cyclic(n) if kind == "Z" else _dihedral(n))


def prefix_products(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """``out[:, t]`` = index of ``g_t o ... o g_0`` for element indices ``tokens [B, T]``.

    A ``lax.scan`` over time: ``p_t = table[g_t, p_{t-1}]``, starting from the identity (0).
    """
    table = jnp.asarray(table, jnp.int32)

    def step(p, g):
        p = table[g, p]
        return p, p

    _, out = lax.scan(step, jnp.zeros(tokens.shape[:1], jnp.int32), tokens.T.astype(jnp.int32))
    return out.T


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer mixer (the finaliser of MurmurHash3), on uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def word_hash(tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """A uint32 hash of each word ``tokens[i, :lengths[i]]`` (positions after it ignored)."""
    T = tokens.shape[1]
    valid = jnp.arange(T)[None, :] < lengths[:, None]
    pos = jnp.arange(T, dtype=jnp.uint32)[None, :]
    x = tokens.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) + pos * jnp.uint32(0x632BE5AB)
    h = jnp.where(valid, _mix32(x + jnp.uint32(0x1234567)), jnp.uint32(0))
    # a sum of mixed (token, position) pairs, mixed again with the length
    return _mix32(jnp.sum(h, axis=1, dtype=jnp.uint32) ^ _mix32(lengths.astype(jnp.uint32)))


class GroupWordProblem(SequenceTask):
    """The word problem of a finite group: the prefix product at every position.

    Tokens are element indices ``0 .. n-1`` drawn uniformly (``pad_id = n``); ``labels[:, t]``
    is the index of ``g_t o ... o g_0``; the mask is 1 at every position of an example (the
    loss and the accuracy are per token). ``chance = 1 / n``.

    Args:
      group: a :class:`Group` or its name.
      train_sizes, test_sizes: inclusive length ranges.
      holdout: fraction of the words of each length held out of training (0: none). SLiCE's
        A5 protocol splits its data 80 / 20 at each length (``holdout=0.2``). A word's side is
        fixed by a hash of the word, so the split needs no stored data: :meth:`train_batch`
        draws only training words, :meth:`sample` and :meth:`sample_lengths` only held-out
        ones (uniformly within each side, by rejection).
    """

    kind = "tokens"
    channels = 0
    per_token = True  # labels at every position: evaluated as per-position curves

    def __init__(self, group: Group | str, train_sizes=(128, 128), test_sizes=(1, 512),
                 holdout: float = 0.0):
        super().__init__(train_sizes, test_sizes)
        self.group = get_group(group) if isinstance(group, str) else group
        self.holdout = holdout
        self.name = self.group.name.lower()
        self.num_symbols = self.group.order
        self.num_classes = self.group.order
        self.chance = 1.0 / self.group.order
        self.symbols = tuple(f"g{i}" for i in range(self.group.order))

    @property
    def holdout(self) -> float:
        return self._holdout

    @holdout.setter
    def holdout(self, value: float) -> None:
        if isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
            raise ValueError(f"holdout must be a fraction in [0, 1), got {value!r}")
        self._holdout = float(value)

    def __repr__(self) -> str:
        return (f"GroupWordProblem({self.group.name}, train={self.train_sizes}, "
                f"test={self.test_sizes}, holdout={self.holdout})")

    def held_out(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        """``[B]`` bool: whether each word ``tokens[i, :lengths[i]]`` is on the held-out side."""
        bucket = word_hash(tokens, lengths) % jnp.uint32(10000)
        return bucket < jnp.uint32(int(round(self.holdout * 10000)))

    def _draw(self, key, lengths, size, side: str):
        """Uniform words of the given lengths on one side ("all", "train", "test")."""
        B, n = lengths.shape[0], self.group.order
        draw = lambda k: jax.random.randint(k, (B, size), 0, n, dtype=jnp.int32)
        if side == "all" or self.holdout == 0.0:
            return draw(key)
        want = side == "test"

        def body(c):
            toks, i, bad = c
            toks = jnp.where(bad[:, None], draw(jax.random.fold_in(key, i)), toks)
            return toks, i + 1, self.held_out(toks, lengths) != want

        toks = draw(jax.random.fold_in(key, 0))
        init = (toks, jnp.int32(1), self.held_out(toks, lengths) != want)
        # check_split makes sure both sides have words at the small lengths; at the others
        # each draw lands on a side with probability ~holdout, so the cap is never reached
        toks, _, _ = lax.while_loop(lambda c: jnp.any(c[2]) & (c[1] < self.MAX_DRAWS), body,
                                    init)
        return toks

    MAX_DRAWS = 2000
    _ENUMERATE = 1 << 20  # lengths with at most this many words are checked word by word

    def check_split(self, lengths) -> None:
        """Raises ValueError if a length has no word on one side of the split (a group's few
        words of length 1 or 2 may all hash to one side), so sampling there cannot succeed."""
        if not self.holdout:
            return
        n = self.group.order
        for L in lengths:
            if n ** L > self._ENUMERATE:
                continue
            words = np.stack(np.meshgrid(*[np.arange(n)] * L, indexing="ij"), -1).reshape(-1, L)
            held = np.asarray(self.held_out(jnp.asarray(words), jnp.full((len(words),), L)))
            if held.all() or not held.any():
                raise ValueError(
                    f"{self.group.name}: no word of length {L} falls on the "
                    f"{'training' if held.all() else 'held-out'} side of a {self.holdout} "
                    f"split ({len(words)} words); use other lengths or another holdout")

    def sample_lengths(self, key, lengths, size, *, side: str = "test"):
        """Words of the given lengths padded to ``size``; mask 1 at every position of a word.

        Args:
          key: PRNG key.
          lengths: ``[B]`` int lengths in ``[1, size]``.
          size: static padded length ``T``.
          side: ``"test"`` (the held-out words when ``holdout > 0``, else any), ``"train"`` (the
            others) or ``"all"`` (any word, ignoring the split).
        """
        if side not in ("all", "train", "test"):
            raise ValueError(f"side must be 'all', 'train' or 'test', got {side!r}")
        lengths = self.effective_lengths(lengths)
        tokens = self._draw(key, lengths, size, side)
        labels = prefix_products(self.group.table, tokens)
        valid = jnp.arange(size)[None, :] < lengths[:, None]
        inputs = jnp.where(valid, tokens, self.pad_id).astype(jnp.int32)
        return inputs, labels.astype(jnp.int32), valid.astype(jnp.float32)

    def sample(self, key, batch, size):
        """``batch`` held-out (or, without a split, any) words of length ``size``."""
        return self.sample_lengths(key, jnp.full((batch,), size, jnp.int32), size)

    def train_batch(self, key, batch):
        """Training words, lengths uniform in ``train_sizes``, padded to the largest."""
        lo, hi = self.train_sizes
        k_len, k_tok = jax.random.split(key)
        lengths = jax.random.randint(k_len, (batch,), lo, hi + 1)
        return self.sample_lengths(k_tok, lengths, hi, side="train")
