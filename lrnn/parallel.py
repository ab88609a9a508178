"""Sequence parallelism: a recurrence whose time axis is split over a device mesh.

Every recurrence ``S_t = A_t S_{t-1} + b_t`` over a shard of the sequence composes to one
affine map, the shard's *summary* ``(A, b)`` (``b`` is the state the shard reaches from a zero
state). Its size does not depend on the shard's length. So a sequence split over ``P`` devices
along a mesh axis runs in three steps, inside ``jax.shard_map``:

1. each device computes its summary from its chunk summaries (the ops do this);
2. the summaries are exchanged and each device folds those of the earlier shards, starting
   from the global initial state ``h0``, into the state entering its shard
   (:func:`shard_prefix`);
3. each device runs its local pass from that state.

Steps 1 and 3 can share one local pass where the outputs are affine in the entering state:
``lrnn.ops.gated_linear_attention`` and the delta-rule ops run their pass once (from a zero
state, the delta rule with the transition product carried as extra state columns) and add the
entering state's contribution with one matmul after the exchange (``benchmarks/multigpu.md``).

Two exchanges are offered (``exchange=``):

* ``"all_gather"`` (LASP-2 style): one ``all_gather`` of the ``P`` summaries, then every
  device folds ``h0`` through them locally (``P`` matrix-vector products). One round of
  communication; each device receives ``(P - 1) (|A| + |b|)`` values.
* ``"ppermute"``: a Hillis-Steele doubling scan with ``jax.lax.ppermute``:
  ``ceil(log2 P)`` rounds, each device sending ``|A| + |b|`` values per round except the last
  (``|b|`` only), plus one shift of ``|b|``. Less data for large ``P`` (logarithmic instead of
  linear), more rounds of latency.

Here ``|A|`` and ``|b|`` are the element counts of one summary (all batch and head axes
included), always float32 (4 bytes each). The global final state is broadcast from the last
shard with one ``psum`` of ``|b|`` values (a ring all-reduce moves ``2 (P - 1) / P |b|`` per
device); XLA drops it when the final state is not used. :func:`exchange_bytes` counts these.

None of it grows with the sequence length. The backward pass is sequence-parallel too: the
transpose of ``all_gather`` is a reduce-scatter of the same size, the transpose of a
``ppermute`` is the reverse ``ppermute``.

Sequence lengths: ``jax.shard_map`` splits the time axis evenly, so the global length ``T``
must be a multiple of ``P`` (:func:`sequence_sharded` rejects other lengths with a message
saying so). The local length ``T / P`` need *not* be a multiple of any op's chunk size: the
ops handle a ragged last chunk on every shard.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lrnn import _compat
from lrnn.monoid import EXCHANGES, Affine, Monoid, _check_exchange, compute_dtype

__all__ = [
    "EXCHANGES",
    "shard_prefix",
    "scan",
    "scan_sequential",
    "exchange_bytes",
    "sequence_sharded",
    "initialize_from_env",
    "global_array",
    "sequence_axis",
    "current_axis",
    "axis_kwargs",
    "causal_pad",
    "position_offset",
]


# ------------------------------------------------------------------------------------------
# The exchange
# ------------------------------------------------------------------------------------------
def _check_axis_name(axis_name, fn: str) -> None:
    if not isinstance(axis_name, str):
        raise TypeError(
            f"{fn}: axis_name must be the name (str) of the mesh axis the time axis is split "
            f"over, got {axis_name!r}"
        )


def shard_prefix(
    monoid: Monoid,
    summary: Affine,
    h0: jax.Array | None = None,
    *,
    axis_name: str,
    exchange: str = "all_gather",
    reverse: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """The state entering this shard, and the global final state.

    Call inside ``jax.shard_map`` with the time axis split over the mesh axis ``axis_name``
    (shard ``i`` holds the ``i``-th block of time steps).

    Args:
      monoid: the storage format of ``summary.A`` (``DIAGONAL``, ``BlockDiagonal``,
        ``DENSE``).
      summary: this shard's composition ``Affine(A, b)`` over its local time steps from a zero
        state, with no time axis: ``A`` in the monoid's format ``[..., n]`` /
        ``[..., n/bs, bs, bs]`` / ``[..., n, n]`` and ``b`` a vector ``[..., n]`` or matrix
        state ``[..., n, m]``. E.g. gated linear attention: ``A [B, H, dk]`` (DIAGONAL),
        ``b [B, H, dk, dv]``; delta rule: ``A [B, H, dk, dk]`` (DENSE), ``b [B, H, dk, dv]``.
      h0: the global initial state, shaped like ``summary.b``, the same on every shard
        (replicated); zeros if None. With ``reverse=True`` it enters after the last shard.
      axis_name: the mesh axis the time axis is split over.
      exchange: ``"all_gather"`` (one round, receives ``(P - 1) (|A| + |b|)`` values per
        device) or ``"ppermute"`` (``ceil(log2 P)`` rounds, sends
        ``(ceil(log2 P) - 1) (|A| + |b|) + 2 |b|`` values per device). See the module
        docstring; :func:`exchange_bytes` counts them.
      reverse: the recurrence runs from the end (``S_t = A_t S_{t+1} + b_t``): the state
        entering shard ``i`` folds the shards after it.

    Returns:
      ``(h_in, h_final)``, both shaped like ``summary.b`` in float32 (or float64 for float64
      inputs): ``h_in`` is ``h0`` folded through the summaries of all earlier shards (the
      state to start this shard's local pass from); ``h_final`` is the state after the last
      shard, the same on every shard (invariant over ``axis_name`` for ``shard_map``'s
      replication check, so it may leave with ``out_specs=P()``).
    """
    fn = "shard_prefix"
    _check_axis_name(axis_name, fn)
    _check_exchange(exchange, fn)
    if not isinstance(monoid, Monoid):
        raise TypeError(f"{fn}: monoid must be an lrnn monoid (DIAGONAL, ...), got {monoid!r}")
    monoid.validate(summary, "summary")
    dtype = compute_dtype(summary.A.dtype, summary.b.dtype)
    if h0 is not None:
        h0 = jnp.asarray(h0)
        if h0.shape != summary.b.shape:
            raise ValueError(
                f"{fn}: h0 must have the shape of summary.b {summary.b.shape}, got {h0.shape}"
            )
        dtype = compute_dtype(dtype, h0.dtype)
        h0 = h0.astype(dtype)
    A = summary.A.astype(dtype)
    b = summary.b.astype(dtype)
    elem = Affine(A, b)

    n_shards = _compat.axis_size(axis_name)
    idx = lax.axis_index(axis_name)
    # The shard whose outgoing state is the global final state.
    last = 0 if reverse else n_shards - 1
    if n_shards == 1:
        # + zeros: varying over the axis like every other h_in (the ops' loops carry it).
        h_in = jnp.zeros_like(b) if h0 is None else h0 + jnp.zeros_like(b)
        h_last = monoid.apply(elem, h_in)
    elif exchange == "all_gather":
        h_in, h_last = _prefix_all_gather(monoid, elem, h0, axis_name, idx, reverse)
    else:
        h_in, h_last = _prefix_ppermute(monoid, elem, h0, axis_name, idx, n_shards, reverse)
    # Broadcast the last shard's outgoing state: a psum of a masked value is invariant over the
    # axis (and transposes to a free pvary), which the replication check needs.
    h_final = lax.psum(jnp.where(idx == last, h_last, jnp.zeros_like(h_last)), axis_name)
    return h_in, h_final


def _prefix_all_gather(monoid, elem, h0, axis_name, idx, reverse):
    A_all = lax.all_gather(elem.A, axis_name)  # [P, ...]
    b_all = lax.all_gather(elem.b, axis_name)
    # Adding the (varying) zeros marks h0 as varying over the axis, as lax.scan's carry must be.
    h = jnp.zeros_like(elem.b) if h0 is None else h0 + jnp.zeros_like(elem.b)

    def step(h, ab):
        return monoid.apply(Affine(*ab), h), h

    # h_before[i] = the state entering shard i (for reverse=True, lax.scan walks i = P-1..0
    # and still writes the carry before step i to slot i).
    h_last, h_before = lax.scan(step, h, (A_all, b_all), reverse=reverse)
    h_in = lax.dynamic_index_in_dim(h_before, idx, axis=0, keepdims=False)
    return h_in, h_last


def _prefix_ppermute(monoid, elem, h0, axis_name, idx, n_shards, reverse):
    A, b = elem
    matrix = monoid.is_matrix_state(elem)
    first = n_shards - 1 if reverse else 0
    if h0 is not None:  # the first shard starts from h0: fold it into its summary
        b = jnp.where(idx == first, monoid.apply(elem, h0), b)

    def src_dst(d):  # pairs (source, destination) for distance d along the recurrence
        if reverse:
            return [(j, j - d) for j in range(d, n_shards)]
        return [(j, j + d) for j in range(n_shards - d)]

    # Hillis-Steele: before the round with distance d, shard i holds the composition of the
    # (up to) d shards ending at i. Once the window reaches the first shard, b is the true
    # state and A is no longer needed, so the last round sends b alone.
    d = 1
    while d < n_shards:
        last_round = 2 * d >= n_shards
        has = (idx <= n_shards - 1 - d) if reverse else (idx >= d)
        b_recv = lax.ppermute(b, axis_name, src_dst(d))
        b_new = monoid.matvec(A, b_recv, matrix_state=matrix) + b
        if not last_round:
            A_recv = lax.ppermute(A, axis_name, src_dst(d))
            A = jnp.where(_bcast(has, A), monoid.matmul(A, A_recv), A)
        b = jnp.where(_bcast(has, b), b_new, b)
        d *= 2
    # b is now the state leaving each shard; shift it by one to get the state entering it.
    h_in = lax.ppermute(b, axis_name, src_dst(1))
    start = jnp.zeros_like(b) if h0 is None else h0
    h_in = jnp.where(idx == first, start, h_in)
    return h_in, b


def _bcast(mask, like):
    return jnp.broadcast_to(mask, like.shape)


def exchange_bytes(
    monoid: Monoid,
    summary: Affine,
    n_shards: int,
    exchange: str = "all_gather",
    *,
    final_state: bool = True,
) -> dict[str, float]:
    """Bytes one device moves in :func:`shard_prefix`'s forward pass (counted, not measured).

    Args:
      monoid: the summary's monoid.
      summary: ``Affine`` of arrays or ``jax.ShapeDtypeStruct`` shaped like one shard's
        summary (no time axis).
      n_shards: P, the size of the mesh axis.
      exchange: ``"all_gather"`` or ``"ppermute"``.
      final_state: include the ``psum`` that broadcasts the global final state.

    Returns:
      ``{"exchange": ..., "final_state": ..., "total": ...}`` in bytes (float32 summaries):
      for ``all_gather`` the bytes received, for ``ppermute`` the bytes sent per device (the
      same on a ring), for the final state ``2 (P - 1) / P |b|`` (ring all-reduce).
    """
    _check_exchange(exchange, "exchange_bytes")
    monoid.check_A(summary.A, "summary.A")
    size_a = math.prod(summary.A.shape) * 4
    size_b = math.prod(summary.b.shape) * 4
    p = int(n_shards)
    if p <= 1:
        ex = 0.0
    elif exchange == "all_gather":
        ex = float((p - 1) * (size_a + size_b))
    else:
        rounds = math.ceil(math.log2(p))
        ex = float((rounds - 1) * (size_a + size_b) + 2 * size_b)
    fin = 2.0 * (p - 1) / p * size_b if (final_state and p > 1) else 0.0
    return {"exchange": ex, "final_state": fin, "total": ex + fin}


# ------------------------------------------------------------------------------------------
# Sharded scans (lrnn.scan / lrnn.scan_sequential with axis_name=...)
# ------------------------------------------------------------------------------------------
def scan(
    monoid: Monoid,
    elems: Affine,
    h0: jax.Array | None = None,
    *,
    axis: int = 0,
    reverse: bool = False,
    axis_name: str,
    exchange: str = "all_gather",
) -> jax.Array:
    """:func:`lrnn.scan` on a time axis split over the mesh axis ``axis_name``.

    Call inside ``jax.shard_map``: ``elems`` holds this shard's time steps, ``h0`` is the
    global initial state (replicated). One local ``associative_scan`` gives the prefix
    compositions ``(A_{0..t}, b_{0..t})``; its last entry is the shard summary; then
    ``h_t = A_{0..t} h_in + b_{0..t}``.

    Returns:
      this shard's states, shaped like ``elems.b`` (``[..., T/P, ...]``), in its dtype.
    """
    from lrnn.monoid import _associative, _prepare

    _check_axis_name(axis_name, "scan")
    _check_exchange(exchange, "scan")
    elems, h0, axis, _, out_dtype = _prepare(monoid, elems, h0, axis, "scan")
    comp = _associative(monoid, elems, axis, reverse)
    end = 0 if reverse else -1
    summary = Affine(jnp.take(comp.A, end, axis=axis), jnp.take(comp.b, end, axis=axis))
    h_in, _ = shard_prefix(
        monoid, summary, h0, axis_name=axis_name, exchange=exchange, reverse=reverse
    )
    h_in = jnp.broadcast_to(jnp.expand_dims(h_in, axis), comp.b.shape)
    matrix = monoid.is_matrix_state(comp)
    h = monoid.matvec(comp.A, h_in, matrix_state=matrix) + comp.b
    return h.astype(out_dtype)


def scan_sequential(
    monoid: Monoid,
    elems: Affine,
    h0: jax.Array | None = None,
    *,
    axis: int = 0,
    reverse: bool = False,
    axis_name: str,
    exchange: str = "all_gather",
) -> jax.Array:
    """:func:`lrnn.scan_sequential` on a time axis split over ``axis_name``.

    The shard summary comes from a ``lax.scan`` composing the local elements one at a time;
    then the local reference pass runs from the incoming state.
    """
    from lrnn.monoid import _prepare
    from lrnn.monoid import scan_sequential as local_sequential

    _check_axis_name(axis_name, "scan_sequential")
    _check_exchange(exchange, "scan_sequential")
    elems, h0, axis, _, out_dtype = _prepare(monoid, elems, h0, axis, "scan_sequential")
    A = jnp.moveaxis(elems.A, axis, 0)
    b = jnp.moveaxis(elems.b, axis, 0)
    first = Affine(A[-1], b[-1]) if reverse else Affine(A[0], b[0])
    rest = Affine(A[:-1], b[:-1]) if reverse else Affine(A[1:], b[1:])

    def step(acc, ab):
        return monoid.combine(acc, Affine(*ab)), None

    summary, _ = lax.scan(step, first, rest, reverse=reverse)
    h_in, _ = shard_prefix(
        monoid, summary, h0, axis_name=axis_name, exchange=exchange, reverse=reverse
    )
    h = local_sequential(monoid, elems, h_in, axis=axis, reverse=reverse)
    return h.astype(out_dtype)


# ------------------------------------------------------------------------------------------
# Models: the current sequence axis, causal halos, positions
# ------------------------------------------------------------------------------------------
_AXIS: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "lrnn_sequence_axis", default=None
)


@contextlib.contextmanager
def sequence_axis(axis_name: str | None, exchange: str = "all_gather"):
    """Within this block (at trace time), layers treat time as split over ``axis_name``.

    :func:`sequence_sharded` enters it around the wrapped call, so a model whose layers read
    :func:`axis_kwargs` / :func:`causal_pad` / :func:`position_offset` runs sequence-parallel
    without threading ``axis_name`` through every ``__call__``. ``None`` switches it off.
    """
    if axis_name is not None:
        _check_axis_name(axis_name, "sequence_axis")
        _check_exchange(exchange, "sequence_axis")
    token = _AXIS.set(None if axis_name is None else (axis_name, exchange))
    try:
        yield
    finally:
        _AXIS.reset(token)


def current_axis() -> str | None:
    """The mesh axis time is split over in the enclosing :func:`sequence_axis`, or None."""
    cur = _AXIS.get()
    return None if cur is None else cur[0]


def axis_kwargs() -> dict[str, Any]:
    """``{"axis_name": ..., "exchange": ...}`` to pass to an ``lrnn.ops`` op from a layer.

    Empty outside :func:`sequence_axis`, so ``op(..., **axis_kwargs())`` is the unsharded call.
    """
    cur = _AXIS.get()
    return {} if cur is None else {"axis_name": cur[0], "exchange": cur[1]}


def causal_pad(x: jax.Array, width: int, *, axis_name: str | None = None,
               time_axis: int = 1) -> jax.Array:
    """``x`` with ``width`` steps of history prepended on its time axis.

    Unsharded (no ``axis_name`` and no enclosing :func:`sequence_axis`) the history is zeros,
    as in ``jnp.pad``. Sharded, it is the last ``width`` steps of the previous shard (a halo,
    one ``ppermute`` of ``width`` steps; zeros on the first shard), so a causal convolution
    over the padded shard equals the unsharded one.

    Args:
      x: ``[..., T_local, ...]`` with time on ``time_axis``.
      width: steps of history (a convolution of K taps needs ``K - 1``); at most ``T_local``.
      axis_name: the mesh axis; defaults to :func:`current_axis`.
      time_axis: the time axis of ``x``.

    Returns:
      ``x`` with ``T_local + width`` steps.
    """
    axis_name = current_axis() if axis_name is None else axis_name
    time_axis %= x.ndim
    if width < 0:
        raise ValueError(f"causal_pad: width must be >= 0, got {width}")
    pad = [(0, 0)] * x.ndim
    pad[time_axis] = (width, 0)
    if axis_name is None or width == 0:
        return jnp.pad(x, pad)
    t_local = x.shape[time_axis]
    if width > t_local:
        raise ValueError(
            f"causal_pad: width {width} exceeds the local length {t_local} of axis "
            f"{time_axis}: the halo would span more than one shard; use fewer devices on "
            f"{axis_name!r} or a longer sequence"
        )
    n = _compat.axis_size(axis_name)
    tail = lax.slice_in_dim(x, t_local - width, t_local, axis=time_axis)
    # Shard 0 receives nothing: ppermute gives it zeros, the unsharded padding.
    halo = lax.ppermute(tail, axis_name, [(j, j + 1) for j in range(n - 1)])
    return jnp.concatenate([halo, x], axis=time_axis)


def position_offset(t_local: int, axis_name: str | None = None) -> jax.Array | int:
    """Global index of this shard's first time step (0 unsharded): ``axis_index * T_local``."""
    axis_name = current_axis() if axis_name is None else axis_name
    if axis_name is None:
        return 0
    return lax.axis_index(axis_name) * t_local


# ------------------------------------------------------------------------------------------
# shard_map wrapper
# ------------------------------------------------------------------------------------------
def _is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | jax.ShapeDtypeStruct)


def _spec(ndim: int, entries: dict[int, str | None]) -> jax.sharding.PartitionSpec:
    parts = [None] * ndim
    for i, name in entries.items():
        if 0 <= i < ndim:
            parts[i] = name
    while parts and parts[-1] is None:
        parts.pop()
    return jax.P(*parts)


def sequence_sharded(
    fn: Callable,
    mesh: jax.sharding.Mesh,
    axis: str = "seq",
    *,
    time_axis: int = 1,
    batch_axis: str | None = None,
    exchange: str = "all_gather",
    out_specs: Any = None,
    pass_axis_name: bool = True,
    check_vma: bool = True,
) -> Callable:
    """Wraps an op (or a model call) to run with its time axis split over ``mesh[axis]``.

    The wrapped function is called as ``wrapped(*seq_args, **kwargs)``:

    * every array leaf of the positional arguments (pytrees allowed, e.g. an ``Affine``) is a
      sequence tensor with time on ``time_axis`` (1 for the ``[B, T, ...]`` layout of the ops,
      0 for ``lrnn.scan`` elements); it is split over ``axis`` (and its axis 0 over
      ``batch_axis`` if given);
    * array leaves of keyword arguments (``initial_state``, ``h0``) are replicated over
      ``axis`` (axis 0 split over ``batch_axis`` if given);
    * everything else (Python numbers, strings, None) is passed through unchanged.

    ``fn`` receives ``axis_name=axis, exchange=exchange`` unless ``pass_axis_name=False``
    (for a model call, whose layers read the axis from :func:`sequence_axis`, entered around
    the call in either case).

    Args:
      fn: e.g. ``lrnn.ops.gated_linear_attention`` or ``functools.partial(lrnn.scan,
        lrnn.DIAGONAL, axis=0)``.
      mesh: a ``jax.sharding.Mesh`` (``jax.make_mesh``) with an axis named ``axis``.
      axis: the mesh axis for time.
      time_axis: the time axis of the positional arrays.
      batch_axis: optional mesh axis for axis 0 of every array (data parallelism).
      exchange: ``"all_gather"`` or ``"ppermute"`` (see :func:`shard_prefix`).
      out_specs: ``jax.P`` pytree for the outputs. If None they are inferred from the
        unsharded call's output shapes: a leaf whose ``time_axis`` has the global length T is
        split over ``axis``, the others (final states) are replicated. Pass it when a state
        dimension could equal T.
      pass_axis_name: whether ``fn`` takes ``axis_name``/``exchange`` keywords.
      check_vma: ``jax.shard_map``'s replication check. Pass False with
        ``implementation="pallas"`` on CPU: jax's Pallas interpreter cannot carry the
        varying-axes types (the kernels raise a ValueError saying so). Compiled kernels declare
        their outputs' varying axes for the check (on GPU only run with False so far:
        ``benchmarks/multigpu.md``; False is the tested setting).

    Returns:
      A function with ``fn``'s outputs, as global arrays sharded over the mesh. With a mesh of
      Explicit axes (``jax.make_mesh``'s default) call it, and use its outputs, inside
      ``with jax.set_mesh(mesh):``; a mesh of Auto axes needs no context.

    Example::

        mesh = jax.make_mesh((8,), ("seq",))
        gla = lrnn.parallel.sequence_sharded(lrnn.ops.gated_linear_attention, mesh)
        with jax.set_mesh(mesh):
            o, S = jax.jit(gla)(q, k, v, gate, initial_state=S0)  # T a multiple of 8

    Raises:
      ValueError: (when called) if T is not a multiple of the size P of ``axis``. lrnn does
        not pad silently, since which padding leaves a recurrence unchanged depends on the op
        (gate 1 with zero keys/values for gated attention, beta 0 for the delta rule, a = 1
        and b = 0 for a linear recurrence); pad with such elements and slice the outputs.
    """
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"sequence_sharded: mesh must be a jax.sharding.Mesh, got {mesh!r}")
    if axis not in mesh.axis_names:
        raise ValueError(
            f"sequence_sharded: axis {axis!r} is not an axis of the mesh {mesh.axis_names}"
        )
    if batch_axis is not None and batch_axis not in mesh.axis_names:
        raise ValueError(
            f"sequence_sharded: batch_axis {batch_axis!r} is not an axis of the mesh "
            f"{mesh.axis_names}"
        )
    _check_exchange(exchange, "sequence_sharded")
    n_seq = mesh.shape[axis]
    n_batch = mesh.shape[batch_axis] if batch_axis is not None else 1

    def wrapped(*args, **kwargs):
        seq_leaves, seq_tree = jax.tree.flatten(args)
        t_len = None
        for i, x in enumerate(seq_leaves):
            if not _is_array(x):
                raise TypeError(
                    f"sequence_sharded: positional arguments must be arrays (sequence "
                    f"tensors); leaf {i} is {type(x).__name__}. Pass other values by keyword."
                )
            if x.ndim <= time_axis:
                raise ValueError(
                    f"sequence_sharded: positional array {i} of shape {x.shape} has no time "
                    f"axis {time_axis}"
                )
            t = x.shape[time_axis]
            t_len = t if t_len is None else t_len
            if t != t_len:
                raise ValueError(
                    f"sequence_sharded: positional arrays disagree on the length of time axis "
                    f"{time_axis}: {t_len} vs {t} (shape {x.shape})"
                )
            if t % n_seq:
                raise ValueError(
                    f"sequence_sharded: the sequence length T = {t} (axis {time_axis} of shape "
                    f"{x.shape}) is not a multiple of the {n_seq} devices of mesh axis "
                    f"{axis!r}. Pad T to a multiple of {n_seq} with elements that leave the "
                    f"state unchanged and slice the outputs; lrnn does not pad for you."
                )
            if batch_axis is not None and time_axis != 0 and x.shape[0] % n_batch:
                raise ValueError(
                    f"sequence_sharded: axis 0 of shape {x.shape} is not a multiple of the "
                    f"{n_batch} devices of mesh axis {batch_axis!r}"
                )
        if t_len is None:
            raise ValueError("sequence_sharded: give at least one sequence array positionally")

        kw_leaves, kw_tree = jax.tree.flatten(kwargs, is_leaf=lambda x: x is None)
        arr_pos = [i for i, x in enumerate(kw_leaves) if _is_array(x)]
        kw_arrays = [kw_leaves[i] for i in arr_pos]

        def seq_entries():
            e = {time_axis: axis}
            if batch_axis is not None and time_axis != 0:
                e[0] = batch_axis
            return e

        seq_specs = [_spec(x.ndim, seq_entries()) for x in seq_leaves]
        kw_specs = [
            _spec(x.ndim, {0: batch_axis} if batch_axis is not None else {}) for x in kw_arrays
        ]

        def call(seq_leaves_, kw_arrays_, local):
            leaves = list(kw_leaves)
            for i, x in zip(arr_pos, kw_arrays_):
                leaves[i] = x
            kw = jax.tree.unflatten(kw_tree, leaves)
            seq = jax.tree.unflatten(seq_tree, seq_leaves_)
            if not local:
                return fn(*seq, **kw)
            if pass_axis_name:
                kw = {**kw, "axis_name": axis, "exchange": exchange}
            with sequence_axis(axis, exchange):
                return fn(*seq, **kw)

        specs_out = out_specs
        if specs_out is None:
            # Shapes only, without the inputs' shardings (an unsharded trace of a sharded
            # array under an Explicit mesh would demand out_sharding annotations).
            def bare(x):
                return jax.ShapeDtypeStruct(x.shape, x.dtype)

            shapes = jax.eval_shape(
                lambda s, k: call(s, k, False),
                [bare(x) for x in seq_leaves], [bare(x) for x in kw_arrays],
            )

            def infer(o):
                if o.ndim > time_axis and o.shape[time_axis] == t_len:
                    return _spec(o.ndim, seq_entries())
                if batch_axis is not None and o.ndim >= 1:
                    return _spec(o.ndim, {0: batch_axis})
                return jax.P()

            specs_out = jax.tree.map(infer, shapes)

        mapped = _compat.shard_map(
            lambda s, k: call(s, k, True),
            mesh=mesh,
            in_specs=(seq_specs, kw_specs),
            out_specs=specs_out,
            check_vma=check_vma,
        )
        # Place the inputs as shard_map expects them: a mesh with Explicit axes (the default of
        # jax.make_mesh) does not reshard implicitly.
        put = [
            jax.device_put(x, jax.sharding.NamedSharding(mesh, sp))
            for x, sp in zip([*seq_leaves, *kw_arrays], [*seq_specs, *kw_specs])
        ]
        return mapped(put[: len(seq_leaves)], put[len(seq_leaves) :])

    return wrapped


# ------------------------------------------------------------------------------------------
# Multi-host
# ------------------------------------------------------------------------------------------
_ENV_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_from_env(env: dict[str, str] | None = None, *, timeout_s: int = 300) -> bool:
    """Calls ``jax.distributed.initialize`` when the environment describes a multi-process run.

    Recognised, in order:

    1. ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and
       ``JAX_PROCESS_ID``, all three set: initialise with them (any launcher, e.g. a shell
       loop over nodes or ``torchrun``-style wrappers that export them).
    2. ``LRNN_DISTRIBUTED=1``, or a cluster JAX detects by itself: SLURM (inside ``srun``:
       ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS`` > 1), Open MPI
       (``OMPI_COMM_WORLD_SIZE`` > 1), a multi-host TPU slice on GKE / queued resources
       (``TPU_WORKER_HOSTNAMES`` or ``TPU_PROCESS_ADDRESSES`` naming several hosts, or
       ``MEGASCALE_COORDINATOR_ADDRESS``), Kubernetes JobSets (``JOBSET_NAME``): initialise
       with no arguments and let JAX's cluster detection read them. On a Cloud TPU VM pod slice
       created with ``gcloud`` (detected from the metadata server, not the environment) set
       ``LRNN_DISTRIBUTED=1``.

    Otherwise (a single process) nothing happens. Call it once, before any other JAX call
    that touches devices.

    Args:
      env: the environment to read (default ``os.environ``).
      timeout_s: seconds to wait for all processes to connect.

    Returns:
      True if ``jax.distributed.initialize`` was called (or had been already).

    Raises:
      ValueError: if only some of the three ``JAX_*`` variables are set, or they are not
        integers where integers are expected.
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return True
    given = [k for k in _ENV_EXPLICIT if env.get(k)]
    if given and len(given) < len(_ENV_EXPLICIT):
        missing = [k for k in _ENV_EXPLICIT if k not in given]
        raise ValueError(
            f"initialize_from_env: {given} set but {missing} missing; set all of "
            f"{list(_ENV_EXPLICIT)} (or none)"
        )
    if given:
        try:
            num, pid = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        except ValueError as e:
            raise ValueError(
                "initialize_from_env: JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers, "
                f"got {env['JAX_NUM_PROCESSES']!r}, {env['JAX_PROCESS_ID']!r}"
            ) from e
        if not 0 <= pid < num:
            raise ValueError(f"initialize_from_env: JAX_PROCESS_ID {pid} not in [0, {num})")
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=num,
            process_id=pid,
            initialization_timeout=timeout_s,
        )
        return True

    def _int(key):
        try:
            return int(env.get(key, "0"))
        except ValueError:
            return 0

    def _hosts(key):
        return len([h for h in env.get(key, "").split(",") if h.strip()])

    detected = (
        env.get("LRNN_DISTRIBUTED", "") not in ("", "0")
        or (bool(env.get("SLURM_JOB_ID")) and bool(env.get("SLURM_STEP_NODELIST"))
            and _int("SLURM_NTASKS") > 1)
        or _int("OMPI_COMM_WORLD_SIZE") > 1
        or _hosts("TPU_WORKER_HOSTNAMES") > 1
        or _hosts("TPU_PROCESS_ADDRESSES") > 1
        or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))
        or bool(env.get("JOBSET_NAME"))
    )
    if detected:
        jax.distributed.initialize(initialization_timeout=timeout_s)
        return True
    return False


def global_array(
    local_data, mesh: jax.sharding.Mesh, spec: jax.sharding.PartitionSpec, global_shape=None
) -> jax.Array:
    """A global array from this process's part of it (``jax.make_array_from_process_local_data``).

    Each process passes the rows it loaded; the result spans every process's devices. With one
    process it is ``jax.device_put(local_data, NamedSharding(mesh, spec))``.

    Args:
      local_data: this process's slab (numpy or jax array). Along each mesh-sharded axis it
        holds the slice that this process's devices own; e.g. for ``spec = P("data", "seq")``
        on a mesh whose ``seq`` axis spans processes, process ``p`` holds its block of time.
      mesh: the global mesh (``jax.make_mesh`` over ``jax.devices()``).
      spec: how the global array is split over ``mesh``.
      global_shape: the global shape; inferred when each process's slab is an even share.

    Returns:
      A ``jax.Array`` with sharding ``NamedSharding(mesh, spec)``.
    """
    sharding = jax.sharding.NamedSharding(mesh, spec)
    return jax.make_array_from_process_local_data(sharding, np.asarray(local_data), global_shape)
