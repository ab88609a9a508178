"""Parity and modular arithmetic in the data format of Grazzi et al. (ICLR 2025).

These tasks reproduce the token format of the public generator of "Unlocking State-Tracking
in Linear RNNs Through Negative Eigenvalues" (repository ``automl/unlocking_state_tracking``),
written from a description of its output, not from its code. They are registered as format
``"grazzi"``: ``get_task("parity", task_format="grazzi")``.

How this format differs from the ``"lrnn"`` format (``experiments.tasks.regular``)
----------------------------------------------------------------------------------
``lrnn``: the label sits at the last token of the expression itself, there is no ``'='``
token, and the classes are the residues (``num_classes`` = 2 or 5).

``grazzi``: an example is a sequence ``expression [=] answer`` for next-token prediction.
The answer token is not part of the inputs; it is predicted at the position just before it
(the last bit for parity, the ``'='`` token for modular arithmetic). The answer is a token
id, and the model predicts it over the whole vocabulary (``num_classes = vocab_size``), as
the original loss takes the cross entropy over all vocabulary logits. The mask is 1 only at
that one position; the labels elsewhere hold ``pad_id`` (a valid class, never scored). The
original input sequence also holds a ``0`` in the answer slot (for brackets the digit ``0``);
here every position after the last input is ``pad_id``. Both come after the prediction point,
so a causal model sees the same inputs.

What a length counts
--------------------
A length ``L`` (the values in ``lengths``, ``train_sizes`` and ``test_sizes``) is the
original generator's sequence size, which includes the answer token:

``parity`` (vocab 3: ``0`` PAD, ``1`` bit 0, ``2`` bit 1)
    ``L - 1`` bits, then the answer token (``1`` even number of ones, ``2`` odd). Inputs: the
    ``L - 1`` bits, right-padded with ``0``; label and mask at index ``L - 2``. ``L >= 2``.
``modular_arithmetic`` (vocab 10: ``0`` PAD, ``1 + 2 - 3 * 4 =``, ``5..9`` digits 0..4)
    ``L`` is odd (an even ``L`` is rounded down to ``L - 1``; ``L >= 3``): an expression of
    ``L - 2`` tokens (digits and operators alternating, digits uniform over 0..4, operators
    uniform over ``+ - *``), then ``'='``, then the answer ``5 + value mod 5`` (``*`` binds
    tighter than ``+`` and ``-``; Python's non-negative mod). Inputs: the ``L - 1`` tokens up
    to ``'='``, right-padded with ``0``; label and mask at index ``L - 2`` (the ``'='``).
``modular_arithmetic_brackets`` (vocab 12: digits 0..4 are ids ``0..4``, ``5 +``,
``6 -``, ``7 *``, ``8 (``, ``9 )``, ``10 =``, ``11`` PAD)
    ``L`` counts the expression, ``'='``, the answer and one trailing PAD, and is clamped to
    ``L >= 5``. The expression has exactly ``L - 3`` tokens; inputs are the expression and
    ``'='`` (``L - 2`` tokens), right-padded with ``11``; label and mask at index ``L - 3``
    (the ``'='``); the class is the answer digit id ``value mod 5``. Expressions come from
    the original recursive generator: a segment of ``m < 5`` tokens is one of ``t``,
    ``- t``, ``( t )``, ``( - t )`` (``t`` uniform over 0..4); a longer one is
    ``( LEFT op RIGHT )`` with the left length uniform in ``1 .. m - 4``, the right one
    ``m - left - 3``, and ``op`` uniform over ``+ -`` (``*`` too if ``mult`` is set; it is off
    in every published configuration). Unary minus only comes from the short forms, so
    ``+ -`` and ``- -`` occur (``( 2 ) + - 1``).

Every example must fit: ``L - 1 <= size`` (``L - 2 <= size`` for brackets); the evaluation
pads to at least the largest length, so this always holds there.

All samplers are jittable with ``size`` static. The bracket generator walks the recursive
grammar with an explicit stack inside a ``lax.scan`` over the ``size`` output positions (one
token per step) and evaluates the expression on the fly with a value stack.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from experiments.tasks import register_format
from experiments.tasks.base import SequenceTask

__all__ = ["GrazziParity", "GrazziModularArithmetic", "GrazziModularArithmeticBrackets"]

MOD = 5


class _GrazziTask(SequenceTask):
    """Shared layout: ``L - n_hidden`` input tokens, the answer predicted at the last one.

    Subclasses implement :meth:`_tokens`, which returns the input tokens ``[B, size]``
    (already padded) and the answer class ``[B]`` for effective lengths ``lengths``.
    """

    task_format = "grazzi"
    n_hidden = 1  # tokens of a length not in the inputs (the answer, plus a PAD for brackets)
    min_length = 2
    table: tuple[str, ...] = ()  # token id -> symbol
    _vocab = 0
    _pad = 0

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def pad_id(self) -> int:
        return self._pad

    def effective_lengths(self, lengths: jax.Array) -> jax.Array:
        lengths = jnp.asarray(lengths, jnp.int32)
        if self.odd_lengths:
            lengths = lengths - (1 - lengths % 2)
        return jnp.maximum(lengths, self.min_length)

    def _tokens(self, key, lengths, size):
        raise NotImplementedError

    def sample_lengths(self, key: jax.Array, lengths: jax.Array, size: int):
        """Examples of the given lengths (see the module docstring), padded to ``size``.

        Returns ``inputs [B, size] int32``, ``labels [B, size] int32`` (the answer class at the
        answer position, ``pad_id`` elsewhere) and ``mask [B, size] float32`` (1 only at the
        answer position, index ``L - n_hidden - 1``).
        """
        need = self.min_length - self.n_hidden
        if size < need:
            raise ValueError(f"{self.name} (grazzi) needs size >= {need}, got {size}")
        lengths = self.effective_lengths(lengths)
        inputs, answer = self._tokens(key, lengths, size)
        pos = jnp.arange(size)[None, :]
        at = pos == (lengths - self.n_hidden - 1)[:, None]
        labels = jnp.where(at, answer[:, None], self.pad_id).astype(jnp.int32)
        return inputs.astype(jnp.int32), labels, at.astype(jnp.float32)

    def decode(self, tokens) -> str:
        """Readable string of one example's tokens (padding dropped)."""
        return " ".join(self.table[int(t)] for t in tokens if int(t) != self.pad_id)


# ---------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------
class GrazziParity(_GrazziTask):
    """Bits (ids 1 / 2); the answer token is 1 for an even number of ones, 2 for odd."""

    name = "parity"
    num_symbols = 2
    num_classes = 3
    chance = 0.5
    _vocab = 3
    _pad = 0
    min_length = 2
    table = ("[PAD]", "0", "1")

    def _tokens(self, key, lengths, size):
        bits = jax.random.randint(key, (lengths.shape[0], size), 1, 3)
        valid = jnp.arange(size)[None, :] < (lengths - 1)[:, None]
        bits = jnp.where(valid, bits, 0)
        ones = jnp.sum(bits == 2, axis=1)
        return bits, ones % 2 + 1


# ---------------------------------------------------------------------------------------------
# Modular arithmetic without brackets
# ---------------------------------------------------------------------------------------------
_M_PLUS, _M_MINUS, _M_TIMES, _M_EQ, _M_DIGIT0 = 1, 2, 3, 4, 5


def _eval_flat(tokens: jax.Array) -> jax.Array:
    """Value mod 5 after every prefix ending in a digit of ``d op d op ...`` (ids as in
    :class:`GrazziModularArithmetic`), with ``*`` binding tighter; ``[B, T]`` int32."""

    def step(carry, tok):
        acc, term, sign, mul = carry
        is_digit = tok >= _M_DIGIT0
        d = tok - _M_DIGIT0
        term = jnp.where(is_digit, jnp.where(mul, term * d, d) % MOD, term)
        mul = jnp.where(is_digit, False, mul | (tok == _M_TIMES))
        addsub = (tok == _M_PLUS) | (tok == _M_MINUS)
        acc = jnp.where(addsub, (acc + sign * term) % MOD, acc)
        sign = jnp.where(addsub, jnp.where(tok == _M_PLUS, 1, -1), sign)
        return (acc, term, sign, mul), (acc + sign * term) % MOD

    B = tokens.shape[0]
    zeros = jnp.zeros((B,), jnp.int32)
    init = (zeros, zeros, jnp.ones_like(zeros), jnp.zeros((B,), bool))
    _, values = lax.scan(step, init, tokens.T.astype(jnp.int32))
    return values.T


class GrazziModularArithmetic(_GrazziTask):
    """``d op d ... d =`` with digits 0-4 (ids 5-9) and ``+ - *``; answer ``5 + value mod 5``."""

    name = "modular_arithmetic"
    num_symbols = 9
    num_classes = 10
    chance = 1.0 / MOD
    odd_lengths = True
    _vocab = 10
    _pad = 0
    min_length = 3
    table = ("[PAD]", "+", "-", "*", "=", "0", "1", "2", "3", "4")

    def _tokens(self, key, lengths, size):
        k_d, k_o = jax.random.split(key)
        shape = (lengths.shape[0], size)
        digits = jax.random.randint(k_d, shape, 0, MOD) + _M_DIGIT0
        ops = jax.random.randint(k_o, shape, _M_PLUS, _M_TIMES + 1)
        pos = jnp.arange(size)[None, :]
        expr_len = (lengths - 2)[:, None]
        tokens = jnp.where(pos % 2 == 0, digits, ops)
        tokens = jnp.where(pos < expr_len, tokens, jnp.where(pos == expr_len, _M_EQ, 0))
        values = _eval_flat(tokens)
        value = jnp.take_along_axis(values, expr_len - 1, axis=1)[:, 0]
        return tokens, value + _M_DIGIT0


# ---------------------------------------------------------------------------------------------
# Modular arithmetic with brackets
# ---------------------------------------------------------------------------------------------
_B_PLUS, _B_MINUS, _B_TIMES, _B_OPEN, _B_CLOSE, _B_EQ, _B_PAD = 5, 6, 7, 8, 9, 10, 11
# Stack items of the generator: a pending segment of m tokens is -m; a literal is a code that
# says which token to emit and what to do with the value stack.
_NEG = 20  # _NEG + t: emit digit t, push the value -t
_CLOSE_OP = 30  # _CLOSE_OP + o: emit ')', combine the two top values with operator o (+ - *)


def _bracket_one(length, bits, ops, digits, size):
    """One expression of ``length - 3`` tokens, then '=', then PAD, as ``[size]`` tokens, and
    its value mod 5. ``bits`` / ``ops`` / ``digits`` hold one random draw per step."""
    depth = size + 8  # every stack item emits >= 1 token, so depth <= size + 1 where it matters
    stack = jnp.zeros((depth,), jnp.int32).at[0].set(_B_EQ).at[1].set(-(length - 3))
    vals = jnp.zeros((depth,), jnp.int32)

    def step(carry, x):
        stack, sp, vals, vp = carry
        b, o, t = x
        empty = sp == 0
        item = stack[jnp.maximum(sp - 1, 0)]
        m = -item
        is_seg = item < 0
        # a long segment: ( LEFT op RIGHT )
        span = jnp.maximum(m - 4, 1).astype(jnp.uint32)
        left = 1 + (b % span).astype(jnp.int32)
        right = m - left - 3
        long_w = jnp.stack([_CLOSE_OP + o, -right, _B_PLUS + o, -left])
        # short segments: t, - t, ( t ), ( - t )
        w = jnp.where(m >= 5, long_w, jnp.stack([_B_CLOSE, _NEG + t, _B_MINUS, 0]))
        w = jnp.where(m == 3, jnp.stack([_B_CLOSE, t, 0, 0]), w)
        w = jnp.where(m == 2, jnp.stack([_NEG + t, 0, 0, 0]), w)
        seg_push = jnp.select([m >= 5, m == 4, m == 3, m == 2], [4, 3, 2, 1], 0)
        seg_tok = jnp.select([m >= 3, m == 2], [_B_OPEN, _B_MINUS], t)
        # literals
        is_neg = (item >= _NEG) & (item < _NEG + MOD)
        is_comb = item >= _CLOSE_OP
        lit_tok = jnp.where(is_neg, item - _NEG, jnp.where(is_comb, _B_CLOSE, item))
        tok = jnp.where(empty, _B_PAD, jnp.where(is_seg, seg_tok, lit_tok))
        n_push = jnp.where(is_seg, seg_push, 0)
        stack = lax.dynamic_update_slice(stack, w.astype(jnp.int32), (jnp.maximum(sp - 1, 0),))
        sp = jnp.where(empty, 0, sp - 1 + n_push)
        # value stack: a digit pushes its (possibly negated) value; ')' of a binary node combines
        push = ~empty & ((is_seg & (m == 1)) | (~is_seg & (item < MOD)) | is_neg)
        pval = jnp.where(is_neg, (-(item - _NEG)) % MOD, jnp.where(is_seg, t, item))
        comb = ~empty & is_comb
        a = vals[jnp.maximum(vp - 2, 0)]
        c = vals[jnp.maximum(vp - 1, 0)]
        op = item - _CLOSE_OP
        r = jnp.select([op == 0, op == 1], [a + c, a - c], a * c) % MOD
        widx = jnp.where(comb, vp - 2, vp)
        wval = jnp.where(comb, r, pval)
        vals = jnp.where(push | comb, vals.at[jnp.maximum(widx, 0)].set(wval), vals)
        vp = vp + push.astype(jnp.int32) - comb.astype(jnp.int32)
        return (stack, sp, vals, vp), tok

    init = (stack, jnp.int32(2), vals, jnp.int32(0))
    (_, _, vals, _), tokens = lax.scan(step, init, (bits, ops, digits))
    return tokens, vals[0]


class GrazziModularArithmeticBrackets(_GrazziTask):
    """Recursive bracketed expressions over digits 0-4 (ids 0-4) and ``+ -`` (``*`` with
    ``mult``), then ``'='``; the answer is the digit id ``value mod 5``."""

    name = "modular_arithmetic_brackets"
    num_symbols = 11
    num_classes = 12
    chance = 1.0 / MOD
    _vocab = 12
    _pad = _B_PAD
    n_hidden = 2  # the answer and one trailing PAD
    min_length = 5
    mult = False
    table = ("0", "1", "2", "3", "4", "+", "-", "*", "(", ")", "=", "[PAD]")

    def _tokens(self, key, lengths, size):
        B = lengths.shape[0]
        k_b, k_o, k_d = jax.random.split(key, 3)
        bits = jax.random.bits(k_b, (B, size), jnp.uint32)
        ops = jax.random.randint(k_o, (B, size), 0, 3 if self.mult else 2)
        digits = jax.random.randint(k_d, (B, size), 0, MOD)
        gen = jax.vmap(_bracket_one, in_axes=(0, 0, 0, 0, None))
        return gen(lengths, bits, ops, digits, size)


@register_format("grazzi", "parity")
def _parity():
    return GrazziParity()


@register_format("grazzi", "modular_arithmetic")
def _modular_arithmetic():
    return GrazziModularArithmetic()


@register_format("grazzi", "modular_arithmetic_brackets")
def _modular_arithmetic_brackets():
    return GrazziModularArithmeticBrackets()
