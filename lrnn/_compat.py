"""Small guards for differences between the jax versions lrnn runs on (0.10.x and 0.11.x).

Keep this module tiny: one function per difference, each saying what it papers over.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def axis_size(axis_name) -> int:
    """The (static) size of a named mesh axis inside ``shard_map``.

    ``jax.lax.axis_size`` is public on the versions we support; older ones only offered the
    ``psum(1, axis)`` idiom, which also returns a Python int at trace time.
    """
    fn = getattr(lax, "axis_size", None)
    if fn is not None:
        return int(fn(axis_name))
    return int(lax.psum(1, axis_name))


def shard_map(f, *, mesh, in_specs, out_specs, check_vma: bool = True):
    """``jax.shard_map`` (its ``check_rep`` keyword was renamed ``check_vma``)."""
    try:
        return jax.shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma
        )
    except TypeError as e:  # pragma: no cover - only on versions that spell it check_rep
        if "check_vma" not in str(e):
            raise
        return jax.shard_map(
            f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma
        )



def enable_x64():
    """A context manager turning on float64 (``jax.enable_x64(True)``; older versions had
    it as ``jax.experimental.enable_x64()``)."""
    fn = getattr(jax, "enable_x64", None)
    if fn is not None:
        return fn(True)
    from jax.experimental import enable_x64 as legacy  # pragma: no cover

    return legacy()


def associative_scan(fn, elems, *, reverse: bool = False, axis: int = 0):
    """``jax.lax.associative_scan(fn, elems, reverse=reverse, axis=axis)`` without empty slices.

    The same odd-even recursion as ``lax.associative_scan`` (same ``fn`` calls on the same
    pairs, so the same numerics), except that it never builds a zero-length slice. JAX's
    version does for every length whose halving reaches 2 (2, 4, 5, 8-11, 16-23, ...): its
    ``combine(odd[:-1], elems[2::2])`` is empty there. On jaxlib 0.11.2, an empty array that
    becomes a residual of ``jax.shard_map``'s backward pass crashes the compiler (a segfault
    in Shardy's ``ManualComputationUnusedInputsPattern``), so gradients of any sequence-
    sharded op would crash. Minimal repro, jax 0.11.2, 2 CPU devices::

        f = jax.shard_map(lambda x: lax.associative_scan(jnp.multiply, x), mesh=mesh,
                          in_specs=P("seq"), out_specs=P("seq"))
        jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x)   # x: [4, 3] -> SIGSEGV

    ``tests/test_compat.py`` checks that no traced value here is empty.
    """
    leaves, tree = jax.tree.flatten(elems)
    if not leaves:
        raise ValueError("associative_scan: elems has no arrays")
    ndim = leaves[0].ndim
    if not -ndim <= axis < ndim:
        raise ValueError(f"associative_scan: axis {axis} is out of range for ndim {ndim}")
    axis = axis % ndim
    n = int(leaves[0].shape[axis])
    if any(int(x.shape[axis]) != n for x in leaves):
        raise ValueError(
            "associative_scan: every array in elems needs the same length along axis "
            f"{axis}, got {[x.shape for x in leaves]}"
        )

    def sl(xs, start, stop, stride=1):
        return [lax.slice_in_dim(x, start, stop, stride=stride, axis=axis) for x in xs]

    def combine(a, b):
        out = fn(jax.tree.unflatten(tree, a), jax.tree.unflatten(tree, b))
        return jax.tree.leaves(out)

    def interleave(even, odd):  # even[0], odd[0], even[1], ...; len(even) - len(odd) in {0, 1}
        out = []
        for e, o in zip(even, odd):
            m = o.shape[axis]
            pairs = jnp.stack([lax.slice_in_dim(e, 0, m, axis=axis), o], axis=axis + 1)
            merged = pairs.reshape(e.shape[:axis] + (2 * m,) + e.shape[axis + 1 :])
            if e.shape[axis] > m:
                merged = lax.concatenate([merged, lax.slice_in_dim(e, m, m + 1, axis=axis)],
                                         axis)
            out.append(merged)
        return out

    def rec(xs):
        k = xs[0].shape[axis]
        if k < 2:
            return xs
        odd = rec(combine(sl(xs, 0, k - 1, 2), sl(xs, 1, k, 2)))  # prefixes at 1, 3, 5, ...
        # prefixes at 2, 4, ...: odd prefix before them, combined with the element itself
        n_even_rest = (k - 1) // 2
        first = sl(xs, 0, 1)
        if n_even_rest == 0:
            even = first
        else:
            rest = combine(sl(odd, 0, n_even_rest), sl(xs, 2, k, 2))
            even = [lax.concatenate([f, r], axis) for f, r in zip(first, rest)]
        return interleave(even, odd)

    if reverse:
        leaves = [lax.rev(x, (axis,)) for x in leaves]
    out = rec(leaves) if n > 0 else leaves
    if reverse:
        out = [lax.rev(x, (axis,)) for x in out]
    return jax.tree.unflatten(tree, out)
