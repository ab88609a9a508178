"""Non-finite values stay causal: GLA, the diagonal recurrence, the selective scan, the
structured recurrences and ``lrnn.scan`` (issue #21, item 9; the delta family has its own file).

One NaN or inf at position t of one input (one batch row, head and channel) may only change
outputs at positions >= t. For every implementation an op accepts (the Pallas kernels in
interpret mode here, compiled under the ``gpu`` marker):

- outputs before t equal the same implementation's outputs on the clean inputs;
- from t on, the non-finite entries are exactly those of the sequential loop on the bad
  inputs (never silently finite, nothing else poisoned), the finite ones equal its values;
- the final state (where the op returns one) is non-finite exactly where the loop's is.

Inputs without a time axis (initial states, Mamba's ``A``) are checked from t = 0. Lengths are
not multiples of the chunk, t is inside a chunk (and inside a kernel's sub-block), gates are
signed and there is an initial state. Each (op, implementation) compiles once: the bad inputs
are arguments of one jitted function.

    JAX_PLATFORMS=cuda python3 -m pytest -m gpu tests/test_nonfinite_gla.py
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrnn
import pallas_kernels as pk
from lrnn import ops
from lrnn.numerics import random_inputs

F32 = jnp.float32
VALUES = (np.nan, np.inf)
TOL = 1e-5  # float32; observed errors are ~1e-7
SCALE = 0.5


@dataclasses.dataclass(frozen=True)
class Op:
    """One op: ``make(big)`` -> inputs (dict of f32 arrays), the names with a time axis
    (axis 1), ``call(impl, big)`` -> a function of the inputs returning
    ``(outputs [B, T, ...], final state or None)``, and the implementations tested."""

    make: callable
    time_names: tuple
    call: callable
    impls: tuple


# ------------------------------------------------------------------------------------------
# ops
# ------------------------------------------------------------------------------------------
def _f32(d):
    return {k: np.asarray(v, np.float32) for k, v in d.items()}


# T is no multiple of any chunk; t is inside a chunk of 16 (the XLA forms), in the second
# 16-token sub-block of a kernel chunk (32 small, 64 big) and inside a 128-token tile (big)
def _dims(big):
    return dict(T=1000, t=541, H=4, dk=64, dv=64) if big else dict(T=45, t=27, H=2, dk=16,
                                                                    dv=16)


def _gla_make(gate, steep=False):
    def make(big):
        d = _dims(big)
        x = random_inputs("gated_linear_attention", batch=2, length=d["T"], heads=d["H"],
                          dk=d["dk"], dv=d["dv"], gate=gate, gate_low=0.3, negative=0.3,
                          seed=3)
        if steep:  # the 16-token sub-block holding t decays by e^-59 on some keys: the
            # chunk-parallel kernels' exact column loop (`gla_chunk.SPAN_LIMIT`)
            s0 = d["t"] // 16 * 16
            g = x["gate"][:, s0:s0 + 16, :, :4]
            x["gate"][:, s0:s0 + 16, :, :4] = 0.02 * np.sign(g)
        return _f32(x)

    return make


GLA_KERNELS = {  # pallas_kernels.gated_linear_attention organisations (interpret on CPU)
    "pallas-split": dict(split_intra=True, chunk_parallel=False),
    "pallas-chunk": dict(chunk_parallel=True),
    "pallas-chunk-bthd": dict(chunk_parallel=True, _layout="bthd"),
    "pallas-chunk-gputarget": dict(chunk_parallel=True, _target="gpu", interpret=True),
    "pallas-bf16": dict(dtype=jnp.bfloat16),  # the defaults for 16-bit inputs
    "pallas-split-bf16": dict(split_intra=True, chunk_parallel=False, dtype=jnp.bfloat16),
}


def _gla_call(chunk):
    def call(impl, big):
        kernel_chunk = 64 if big else 32
        if impl in GLA_KERNELS:
            kw = dict(GLA_KERNELS[impl])
            dt = kw.pop("dtype", F32)

            def f(x):
                q, k, v = (x[n].astype(dt) for n in ("q", "k", "v"))
                o, S = pk.gated_linear_attention(q, k, v, x["gate"].astype(dt),
                                                 initial_state=x["initial_state"],
                                                 scale=SCALE, chunk_size=kernel_chunk, **kw)
                return o.astype(F32), S
            return f
        name, _, combine = impl.partition(":")

        def f(x):
            return ops.gated_linear_attention(
                x["q"], x["k"], x["v"], x["gate"], initial_state=x["initial_state"],
                scale=SCALE, chunk_size=kernel_chunk if name == "pallas" else chunk,
                implementation=name, chunk_combine=combine or "loop")
        return f

    return call


# "pallas": implementation="pallas" (for f32 inputs the sequential-chunk kernel, whole
# sub-blocks per step; on a GPU too)
# ("pallas-split-bf16" is "pallas-bf16" on a CPU)
GLA_IMPLS = (("sequential", "scan", "chunked", "chunked:scan", "pallas")
             + tuple(k for k in GLA_KERNELS if k != "pallas-split-bf16"))
GLA_NAMES = ("q", "k", "v", "gate", "initial_state")


def _lr_make(big):
    d = _dims(big)
    # D = 8 dk + 4 channels: the GPU tiles pad the channels
    x = random_inputs("linear_recurrence", batch=2, length=d["T"], dk=8 * d["dk"] + 4,
                      gate_low=0.3, negative=0.4, seed=4)
    return _f32(x)


LR_KERNELS = {  # pallas_kernels.linear_recurrence organisations besides the op's default
    "pallas-tiled": dict(block_t=8, tile_scan=False),
    "pallas-scan": dict(block_t=16, tile_scan=True),
    "pallas-gputarget": dict(_target="gpu", interpret=True),
}


def _lr_call(impl, big):
    if impl in LR_KERNELS:
        kw = LR_KERNELS[impl]
        return lambda x: (pk.linear_recurrence(x["a"], x["b"], x["h0"], **kw), None)
    name, _, combine = impl.partition(":")
    return lambda x: (ops.linear_recurrence(x["a"], x["b"], x["h0"], implementation=name,
                                            chunk_size=16, chunk_combine=combine or "loop"),
                      None)


def _sel_make(big):
    d = _dims(big)
    # N = 12 states: the kernel pads them to 16
    x = random_inputs("selective_scan", batch=2, length=d["T"], dk=d["dk"], dv=12, seed=5)
    return _f32(x)


def _sel_call(impl, big):
    def f(x):
        y = ops.selective_scan(*(x[n] for n in ("u", "delta", "A", "Bm", "Cm", "h0")),
                               signed=True, implementation=impl, chunk_size=16)
        return y, None
    return f


N_STRUCT, D_IN = 8, 3


def _struct_make(structure):
    def make(big):
        d = _dims(big)
        rng = np.random.default_rng(6)
        x = dict(x=rng.normal(size=(2, d["T"], D_IN)), b=rng.normal(size=(2, d["T"], N_STRUCT)),
                 h0=rng.normal(size=(2, N_STRUCT)))
        if structure == "elements-dense":  # precomputed DENSE transitions, spectral norm < 1
            A = rng.normal(size=(2, d["T"], N_STRUCT, N_STRUCT)) / (2 * np.sqrt(N_STRUCT))
            x = dict(A=A, b=x["b"], h0=x["h0"])
        return _f32(x)

    return make


def _struct_weights(structure):
    rng = np.random.default_rng(7)
    f = lambda *s: jnp.asarray(rng.normal(size=s) * 0.3, F32)
    if structure == "diagonal":
        return f(D_IN, N_STRUCT)
    if structure == "block_diagonal":
        return f(D_IN, N_STRUCT // 4, 4, 4)
    return f(D_IN, N_STRUCT)  # walsh_hadamard


def _struct_call(structure):
    def call(impl, big):
        name, _, combine = impl.partition(":")
        kw = dict(implementation=name, chunk_size=16, chunk_combine=combine or "loop")
        if structure == "elements-dense":
            return lambda x: (ops.structured_recurrence(
                lrnn.Affine(x["A"], x["b"]), monoid=lrnn.DENSE, h0=x["h0"], **kw), None)
        w = _struct_weights(structure)
        return lambda x: (ops.structured_recurrence(x["x"], w, x["b"], structure=structure,
                                                    h0=x["h0"], **kw), None)

    return call


def _scan_make(kind):
    def make(big):
        d = _dims(big)
        rng = np.random.default_rng(8)
        T, n, m = d["T"], 6, 3
        if kind == "diagonal":  # matrix state [n, m], signed diagonal
            x = dict(A=rng.uniform(-1, 1, (2, T, n)), b=rng.normal(size=(2, T, n, m)),
                     h0=rng.normal(size=(2, n, m)))
        else:
            x = dict(A=rng.normal(size=(2, T, n, n)) / (2 * np.sqrt(n)),
                     b=rng.normal(size=(2, T, n)), h0=rng.normal(size=(2, n)))
        return _f32(x)

    return make


def _scan_call(kind):
    monoid = lrnn.DIAGONAL if kind == "diagonal" else lrnn.DENSE

    def call(impl, big):
        fn = lrnn.scan_sequential if impl == "sequential" else lrnn.scan
        return lambda x: (fn(monoid, lrnn.Affine(x["A"], x["b"]), x["h0"], axis=1), None)

    return call


OPS = {
    "gla-head": Op(_gla_make("head"), ("q", "k", "v", "gate"), _gla_call(16),
                   GLA_IMPLS),
    "gla-key": Op(_gla_make("key"), ("q", "k", "v", "gate"), _gla_call(16), GLA_IMPLS),
    # per-key gates, chunks of 12: the [C, C, dk] decay tensor instead of sub-blocks
    "gla-key-c12": Op(_gla_make("key"), ("q", "k", "v", "gate"), _gla_call(12),
                      ("sequential", "chunked")),
    "gla-key-steep": Op(_gla_make("key", steep=True), ("q", "k", "v", "gate"), _gla_call(16),
                        ("sequential", "chunked", "pallas", "pallas-chunk",
                         "pallas-chunk-gputarget")),
    "linear_recurrence": Op(_lr_make, ("a", "b"), _lr_call,
                            ("sequential", "scan", "chunked", "chunked:scan", "pallas")
                            + tuple(LR_KERNELS)),
    "selective_scan": Op(_sel_make, ("u", "delta", "Bm", "Cm"), _sel_call,
                         ("sequential", "scan", "chunked", "pallas")),
    "structured-diagonal": Op(_struct_make("diagonal"), ("x", "b"),
                              _struct_call("diagonal"), ("sequential", "scan", "chunked")),
    "structured-block_diagonal": Op(_struct_make("block_diagonal"), ("x", "b"),
                                    _struct_call("block_diagonal"),
                                    ("sequential", "chunked", "chunked:scan")),
    "structured-walsh_hadamard": Op(_struct_make("walsh_hadamard"), ("x", "b"),
                                    _struct_call("walsh_hadamard"), ("sequential", "chunked")),
    "structured-elements-dense": Op(_struct_make("elements-dense"), ("A", "b"),
                                    _struct_call("elements-dense"), ("sequential", "chunked")),
    "scan-diagonal": Op(_scan_make("diagonal"), ("A", "b"), _scan_call("diagonal"),
                        ("sequential", "scan")),
    "scan-dense": Op(_scan_make("dense"), ("A", "b"), _scan_call("dense"),
                     ("sequential", "scan")),
}
NAMES = {
    "gla-head": GLA_NAMES, "gla-key": GLA_NAMES, "gla-key-c12": GLA_NAMES,
    "gla-key-steep": GLA_NAMES,
    "linear_recurrence": ("a", "b", "h0"),
    "selective_scan": ("u", "delta", "Bm", "Cm", "A", "h0"),
    "structured-diagonal": ("x", "b", "h0"), "structured-block_diagonal": ("x", "b", "h0"),
    "structured-walsh_hadamard": ("x", "b", "h0"),
    "structured-elements-dense": ("A", "b", "h0"),
    "scan-diagonal": ("A", "b", "h0"), "scan-dense": ("A", "b", "h0"),
}


# ------------------------------------------------------------------------------------------
# the check
# ------------------------------------------------------------------------------------------
@functools.cache
def _inputs(op, big):
    return OPS[op].make(big)


@functools.cache
def _fn(op, impl, big):
    return jax.jit(OPS[op].call(impl, big))


@functools.cache
def _run(op, impl, name, value, big):
    """``(outputs, final state)`` as float64 NumPy, on the clean inputs (name None) or with
    one bad value in ``name``."""
    x = _inputs(op, big)
    if name is not None:
        x = _inject(x, name, _dims(big)["t"] if name in OPS[op].time_names else None, value)
    o, S = _fn(op, impl, big)({k: jnp.asarray(v) for k, v in x.items()})
    return np.asarray(o, np.float64), None if S is None else np.asarray(S, np.float64)


def _inject(x, name, t, value):
    """One bad element: the middle of every axis, position t on the time axis."""
    a = np.array(x[name])
    idx = [s // 2 for s in a.shape]
    if t is not None:
        idx[0], idx[1] = a.shape[0] - 1, t
    a[tuple(idx)] = value
    return {**x, name: a}


def _rel(x, ref):
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(x - ref) / (den if den > 0 else 1.0))


def _same_nonfinite(got, want, tol, what):
    """Problems (strings) unless got is non-finite exactly where want is, and equal elsewhere."""
    bad_g, bad_w = ~np.isfinite(got), ~np.isfinite(want)
    out = []
    if (bad_w & ~bad_g).any():
        out.append(f"{what}: {int((bad_w & ~bad_g).sum())} entries silently finite")
    if (bad_g & ~bad_w).any():
        out.append(f"{what}: {int((bad_g & ~bad_w).sum())} entries non-finite, the loop's "
                   "are finite")
    ok = ~bad_g & ~bad_w
    if ok.any() and _rel(got[ok], want[ok]) > tol:
        out.append(f"{what}: finite entries differ from the loop's, rel {_rel(got[ok], want[ok])}")
    return out


def problems(op, impl, name, value, big=False, tol=TOL, ref_tol=None):
    """Everything wrong with ``impl`` when ``name`` holds one ``value``; [] when causal."""
    t0 = _dims(big)["t"] if name in OPS[op].time_names else 0
    o_clean, _ = _run(op, impl, None, None, big)
    o, S = _run(op, impl, name, value, big)
    o_ref, S_ref = _run(op, "sequential", name, value, big)
    out = []
    assert np.isfinite(o_clean).all()
    head = o[:, :t0]
    if not np.isfinite(head).all():
        out.append(f"{int((~np.isfinite(head)).sum())} non-finite outputs before t = {t0}")
    elif _rel(head, o_clean[:, :t0]) > tol:
        out.append(f"outputs before t differ from the clean run, rel "
                   f"{_rel(head, o_clean[:, :t0])}")
    ref_tol = tol if ref_tol is None else ref_tol
    out += _same_nonfinite(o[:, t0:], o_ref[:, t0:], ref_tol, "outputs from t on")
    if S is not None:
        out += _same_nonfinite(S, S_ref, ref_tol, "final state")
    assert (~np.isfinite(o_ref[:, t0:])).any()  # the bad value reaches the loop's outputs
    return [f"{name}={value}: {p}" for p in out]


CASES = [(op, impl, name) for op, spec in OPS.items() for impl in spec.impls
         for name in NAMES[op]]


def _tols(impl):
    """(against the clean run, against the float32 loop): bf16 kernels are compared with the
    loop on float32 inputs."""
    return (2e-2, 5e-2) if impl.endswith("bf16") else (TOL, TOL)


@pytest.mark.parametrize("op, impl, name", CASES)
def test_nonfinite_is_causal(op, impl, name):
    tol, ref_tol = _tols(impl)
    found = [p for value in VALUES for p in problems(op, impl, name, value, tol=tol,
                                                     ref_tol=ref_tol)]
    assert not found, found


# ------------------------------------------------------------------------------------------
# compiled kernels (GPU)
# ------------------------------------------------------------------------------------------
# the organisations compiled on a GPU: GLA f32 (sequential-chunk kernel, chunk-parallel),
# bf16 (chunk-parallel: the default; split_intra), the steep diagonal blocks' column loop; the
# diagonal recurrence's scanned and stepped tiles; the fused selective scan; and the XLA forms
_GLA_GPU = ("chunked", "pallas", "pallas-chunk", "pallas-bf16", "pallas-split-bf16")
GPU_CASES = (
    [(op, i, n) for op in ("gla-head", "gla-key") for i in _GLA_GPU for n in GLA_NAMES[:4]]
    + [("gla-key-steep", i, n) for i in ("pallas-chunk", "pallas-bf16")
       for n in ("k", "v", "gate")]
    + [("linear_recurrence", i, n) for i in ("chunked", "pallas", "pallas-tiled")
       for n in ("a", "b")]
    + [("selective_scan", i, n) for i in ("chunked", "pallas") for n in ("u", "delta", "Bm", "Cm")]
)


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (compiled kernels)")
@pytest.mark.parametrize("op, impl, name", GPU_CASES)
def test_nonfinite_is_causal_gpu(op, impl, name):
    tol, ref_tol = _tols(impl)
    tol, ref_tol = max(tol, 1e-4), max(ref_tol, 1e-4)  # longer sums, TF32x3 products
    found = [p for value in VALUES for p in problems(op, impl, name, value, big=True, tol=tol,
                                                     ref_tol=ref_tol)]
    assert not found, found
