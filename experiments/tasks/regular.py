"""Regular-language tasks (Delétang et al. 2023; Grazzi et al. 2025), with jittable samplers.

Every task is a :class:`~experiments.tasks.base.SequenceTask`: random tokens, the answer at
the last token of each example. Labels are computed for every prefix by a ``lax.scan`` (or
a cumulative sum), so one padded batch serves many lengths.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from experiments.tasks.base import SequenceTask

__all__ = [
    "Parity",
    "ModularArithmetic",
    "ModularArithmeticBrackets",
    "CycleNavigation",
    "EvenPairs",
    "evaluate_mod_expression",
]

MOD = 5
PLUS, MINUS, TIMES, OPEN, CLOSE = 5, 6, 7, 8, 9


class Parity(SequenceTask):
    """Bits ``0 / 1``; the answer is the number of ones modulo 2."""

    name = "parity"
    num_symbols = 2
    num_classes = 2
    chance = 0.5
    symbols = ("0", "1")

    def _generate(self, key, lengths, size):
        bits = jax.random.bernoulli(key, 0.5, (lengths.shape[0], size)).astype(jnp.int32)
        return bits, jnp.cumsum(bits, axis=1) % 2


class CycleNavigation(SequenceTask):
    """Actions stay / +1 / -1 on a 5-cycle starting at 0; the answer is the final position."""

    name = "cycle_navigation"
    num_symbols = 3
    num_classes = MOD
    chance = 1.0 / MOD
    symbols = ("=", "+1", "-1")

    def _generate(self, key, lengths, size):
        actions = jax.random.randint(key, (lengths.shape[0], size), 0, 3)
        delta = jnp.array([0, 1, -1], jnp.int32)[actions]
        return actions, jnp.cumsum(delta, axis=1) % MOD


class EvenPairs(SequenceTask):
    """Strings over ``{a, b}``; the answer is whether the numbers of ``ab`` and ``ba`` pairs
    are equal (even in total), i.e. whether the first and the last symbol agree."""

    name = "even_pairs"
    num_symbols = 2
    num_classes = 2
    chance = 0.5
    symbols = ("a", "b")

    def _generate(self, key, lengths, size):
        s = jax.random.bernoulli(key, 0.5, (lengths.shape[0], size)).astype(jnp.int32)
        return s, (s == s[:, :1]).astype(jnp.int32)


def evaluate_mod_expression(tokens: jax.Array) -> jax.Array:
    """Value modulo 5 of every prefix of a well-formed expression, with usual precedence.

    A stack machine with one ``(acc, term, sign, pending_mul)`` record per bracket depth:
    ``+`` / ``-`` fold the running product term into ``acc``; ``*`` multiplies the next
    operand into it; ``)`` turns the finished inner value into an operand of the outer level.

    Args:
      tokens: ``[B, T]`` int, digits ``0..4``, ``5 + / 6 - / 7 * / 8 ( / 9 )``.

    Returns:
      ``[B, T]`` int32: the value of the expression at depth 0 after each token (meaningful
      where the prefix is a complete expression).
    """
    B, T = tokens.shape
    depth_max = T // 2 + 2
    levels = jnp.arange(depth_max)

    def operand(acc, term, mul, oh, x):
        new = jnp.where(mul, term * x[:, None], x[:, None]) % MOD
        return jnp.where(oh, new, term), jnp.where(oh, False, mul)

    def step(carry, tok):
        acc, term, sign, mul, d = carry
        oh = levels[None, :] == d[:, None]
        read = lambda x: jnp.sum(jnp.where(oh, x, 0), axis=1)
        is_digit = tok < MOD
        # digit: operand at level d
        t_dig, m_dig = operand(acc, term, mul, oh, tok)
        term = jnp.where(is_digit[:, None], t_dig, term)
        mul = jnp.where(is_digit[:, None], m_dig, mul)
        # + / -: fold the term into acc
        addsub = ((tok == PLUS) | (tok == MINUS))[:, None] & oh
        acc = jnp.where(addsub, (acc + sign * term) % MOD, acc)
        sign = jnp.where(addsub, jnp.where(tok[:, None] == PLUS, 1, -1), sign)
        term = jnp.where(addsub, 0, term)
        mul = jnp.where(addsub, False, mul)
        # *: the next operand multiplies
        mul = jnp.where((tok == TIMES)[:, None] & oh, True, mul)
        # (: push a fresh level
        is_open = tok == OPEN
        oh_up = levels[None, :] == (d + 1)[:, None]
        fresh = is_open[:, None] & oh_up
        acc = jnp.where(fresh, 0, acc)
        term = jnp.where(fresh, 0, term)
        sign = jnp.where(fresh, 1, sign)
        mul = jnp.where(fresh, False, mul)
        # ): pop, and the inner value becomes an operand one level down
        is_close = tok == CLOSE
        inner = (read(acc) + read(sign) * read(term)) % MOD
        oh_down = levels[None, :] == (d - 1)[:, None]
        t_cl, m_cl = operand(acc, term, mul, oh_down, inner)
        term = jnp.where(is_close[:, None], t_cl, term)
        mul = jnp.where(is_close[:, None], m_cl, mul)
        d = d + is_open.astype(jnp.int32) - is_close.astype(jnp.int32)
        value = (acc[:, 0] + sign[:, 0] * term[:, 0]) % MOD
        return (acc, term, sign, mul, d), value

    zeros = jnp.zeros((B, depth_max), jnp.int32)
    init = (zeros, zeros, jnp.ones_like(zeros), zeros.astype(bool), jnp.zeros((B,), jnp.int32))
    _, values = lax.scan(step, init, tokens.T.astype(jnp.int32))
    return values.T


class ModularArithmetic(SequenceTask):
    """``d op d op ... d`` with digits 0-4 and ``+ - *`` (``*`` binds tighter); answer mod 5.

    Expressions have odd length; an even length is rounded down.
    """

    name = "modular_arithmetic"
    num_symbols = 8
    num_classes = MOD
    chance = 1.0 / MOD
    odd_lengths = True
    symbols = ("0", "1", "2", "3", "4", "+", "-", "*")

    def _generate(self, key, lengths, size):
        k_d, k_o = jax.random.split(key)
        shape = (lengths.shape[0], size)
        digits = jax.random.randint(k_d, shape, 0, MOD)
        ops = jax.random.randint(k_o, shape, PLUS, TIMES + 1)
        tokens = jnp.where(jnp.arange(size)[None, :] % 2 == 0, digits, ops)
        return tokens, evaluate_mod_expression(tokens)


class ModularArithmeticBrackets(SequenceTask):
    """Random bracketed expressions over digits 0-4 and ``+ - *``; answer mod 5.

    The sampler walks the grammar ``E -> d | (E) | E op E`` token by token, choosing
    uniformly among the continuations that can still be closed within the length (opening a
    bracket with probability ``p_open``, closing one with ``p_close``). Lengths are odd.
    """

    name = "modular_arithmetic_brackets"
    num_symbols = 10
    num_classes = MOD
    chance = 1.0 / MOD
    odd_lengths = True
    symbols = ("0", "1", "2", "3", "4", "+", "-", "*", "(", ")")
    p_open = 0.3
    p_close = 0.4

    def _generate(self, key, lengths, size):
        B = lengths.shape[0]
        k_u, k_d, k_o = jax.random.split(key, 3)
        u = jax.random.uniform(k_u, (size, B))
        digits = jax.random.randint(k_d, (size, B), 0, MOD)
        ops = jax.random.randint(k_o, (size, B), PLUS, TIMES + 1)

        def step(carry, xs):
            r, d, want_operand = carry  # remaining tokens, depth, expecting an operand
            u_t, dig, op = xs
            can_open = r - 1 >= d + 2
            open_ = want_operand & can_open & (u_t < self.p_open)
            must_close = (~want_operand) & (r == d) & (d > 0)
            may_close = (~want_operand) & (d > 0) & (r - 1 >= d - 1) & (u_t < self.p_close)
            close = must_close | may_close
            tok = jnp.where(
                want_operand,
                jnp.where(open_, OPEN, dig),
                jnp.where(close, CLOSE, op),
            )
            active = r > 0
            tok = jnp.where(active, tok, 0)
            d = d + jnp.where(active, open_.astype(jnp.int32) - close.astype(jnp.int32), 0)
            want_operand = jnp.where(active, jnp.where(want_operand, open_, ~close), want_operand)
            return (r - 1, d, want_operand), tok

        init = (lengths.astype(jnp.int32), jnp.zeros((B,), jnp.int32), jnp.ones((B,), bool))
        _, tokens = lax.scan(step, init, (u, digits, ops))
        tokens = tokens.T
        return tokens, evaluate_mod_expression(tokens)
