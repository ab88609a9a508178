"""Device meshes from a spec string such as ``"data=4"``.

Only the ``data`` axis (batch sharding) is used by the training loop now. Sequence sharding
(``"data=2,seq=4"``) is the hook for ``lrnn.parallel``: :func:`parse_mesh` accepts a ``seq``
axis and :func:`make_mesh` builds it, but :func:`check_supported` rejects it until the model
code shards the time axis (the extension point is ``experiments.train.batch_sharding``).
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding

__all__ = ["AXES", "parse_mesh", "make_mesh", "check_supported", "data_size"]

AXES = ("data", "seq")  # known axis names, in mesh order
SUPPORTED = ("data", "seq")  # axes the training loop shards ([parallel]: seq added)


def parse_mesh(spec: str) -> dict[str, int]:
    """``"data=2,seq=4"`` -> ``{"data": 2, "seq": 4}``; ``-1`` means all remaining devices."""
    out: dict[str, int] = {}
    if not spec.strip():
        return out
    for part in spec.split(","):
        name, sep, size = part.partition("=")
        name = name.strip()
        if not sep or name not in AXES:
            raise ValueError(f"mesh spec {spec!r}: expected 'axis=size' with axis in {AXES}")
        if name in out:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} given twice")
        try:
            out[name] = int(size)
        except ValueError:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} must be an int") from None
    n = jax.device_count()
    free = [k for k, v in out.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"mesh spec {spec!r}: at most one axis may be -1")
    fixed = 1
    for v in out.values():
        if v != -1:
            if v < 1:
                raise ValueError(f"mesh spec {spec!r}: sizes must be >= 1 (or -1)")
            fixed *= v
    if free:
        out[free[0]] = max(n // fixed, 1)
    total = 1
    for v in out.values():
        total *= v
    if total > n:
        raise ValueError(f"mesh spec {spec!r} needs {total} devices; {n} available")
    return out


def check_supported(axes: dict[str, int]) -> None:
    bad = [k for k, v in axes.items() if k not in SUPPORTED and v > 1]
    if bad:
        raise NotImplementedError(
            f"mesh axes {bad} are not supported by the training loop yet (only {SUPPORTED}); "
            "sequence sharding plugs in through lrnn.parallel"
        )


def make_mesh(spec: str) -> jax.sharding.Mesh | None:
    """The mesh of ``spec`` over the first devices, or None for ``""`` (single device)."""
    axes = parse_mesh(spec)
    if not axes:
        return None
    names = tuple(a for a in AXES if a in axes)
    shape = tuple(axes[a] for a in names)
    total = 1
    for s in shape:
        total *= s
    auto = (jax.sharding.AxisType.Auto,) * len(names)  # shardings propagate as in pjit
    return jax.make_mesh(shape, names, axis_types=auto, devices=jax.devices()[:total])


def data_size(mesh) -> int:
    return 1 if mesh is None or "data" not in mesh.axis_names else mesh.shape["data"]


def replicated(mesh) -> NamedSharding | None:
    return None if mesh is None else NamedSharding(mesh, jax.P())
