"""Small guards for differences between the jax versions lrnn runs on (0.10.x and 0.11.x).

Keep this module tiny: one function per difference, each saying what it papers over.
"""

from __future__ import annotations

import jax
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
