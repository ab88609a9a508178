"""Per-kernel timings of the Pallas paths (a profile without a profiler), with a tile sweep.

Run on the GPU machine, from the repo root:

    PYTHONPATH=$PWD python3 -m experiments.bench.stages --op delta-chunk --json $OUT/st.json

Each stage of a path (the layout transposes, every `pallas_call`, the gate-gradient pass) is
jitted alone and timed on materialised inputs, for every (chunk, block_v, num_warps) in the
sweep; `sum` is the sum of the stages and `total` the public function's fwd+bwd in one jit
(the difference is launch and fusion overhead). Used to find where the time of the
`experiments.bench.kernels` rows goes and which tiles each kernel wants.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys

import jax
import jax.numpy as jnp

from experiments.bench.kernels import _inputs, _time, fwdbwd
from pallas_kernels import _common as cm

F32 = jnp.float32
_BVC = [None]  # delta-chunk: value tile of the chunk-parallel kernels (--block-v-chunk)
_LAYOUT = ["bthd"]  # delta-chunk sequence layout (--layout)
_MODE = [False, "gpu"]  # (interpret, platform); --interpret: a CPU smoke test
_ONLY: list[str] = []  # stage names to time (--only; empty: all)


def _layout(x):  # [B, T, H, d] -> [B, H, T, d]
    return jnp.transpose(x, (0, 2, 1, 3))


def _run_stages(stages, reps):
    """stages: list of (name, fn, args); returns {name: ms}; outputs feed later stages via
    the callables closing over a dict."""
    out = {}
    for name, fn, args in stages:
        if _ONLY and name not in _ONLY:
            continue
        out[name] = _time(jax.jit(fn), *args, reps=reps)
    return out


def delta_chunk_stages(shape, C, bv, nw, gated, reps):
    import pallas_kernels as pk
    from pallas_kernels import delta_chunk as dc
    from pallas_kernels.delta_product import _chunk_cumulative, gate_grad_tokens

    B, T, H, D = shape
    layout = _LAYOUT[0]
    (q, k, v, beta, g), do = _inputs("gated" if gated else "delta", B, T, H, D)
    scale = D ** -0.5
    cfg = (C, scale, gated, *_MODE, bv, nw, layout, _BVC[0] or bv)
    lay = _layout if layout == "bhtd" else (lambda x: x)
    qi, ki, vi, doi = lay(q), lay(k[:, :, :, 0]), lay(v[:, :, :, 0]), lay(do)
    bi = _layout(beta)
    if gated:
        la = jnp.log(_layout(g[..., None])[..., 0])
    else:
        la = jnp.zeros((B, H, T), F32)
    sa = jnp.ones((B, H, T), F32)
    h0 = jnp.zeros((B, H, D, D), F32)
    lgc, sgc = _chunk_cumulative(la, sa, C, gated)
    m, w, u, kg = dc._wu(ki, vi, bi, lgc, sgc, cfg)
    vn, hs, ht = dc._states(kg, w, u, lgc, sgc, h0, cfg)
    dl, gq = dc._dvn_local(qi, ki, lgc, sgc, doi, cfg)
    dvn, dhs, dh0 = dc._adjoints(gq, kg, w, lgc, sgc, doi, dl, jnp.zeros_like(ht), cfg)
    dq, dk, dv, db, dlt = dc._grads(qi, ki, vi, bi, lgc, sgc, m, hs, dhs, vn, dvn, doi, cfg)
    st = [
        ("layout in", lambda q, k, v, b: (lay(q), lay(k[:, :, :, 0]), lay(v[:, :, :, 0]),
                                          _layout(b)), (q, k, v, beta)),
        ("chunk_cumulative", lambda la, sa: _chunk_cumulative(la, sa, C, gated), (la, sa)),
        ("wu", lambda *a: dc._wu(*a, cfg), (ki, vi, bi, lgc, sgc)),
        ("states", lambda *a: dc._states(*a, cfg), (kg, w, u, lgc, sgc, h0)),
        ("out", lambda *a: dc._outputs(*a, cfg), (qi, ki, lgc, sgc, vn, hs)),
        ("dvn_local", lambda *a: dc._dvn_local(*a, cfg), (qi, ki, lgc, sgc, doi)),
        ("dstates", lambda *a: dc._adjoints(*a, cfg),
         (gq, kg, w, lgc, sgc, doi, dl, jnp.zeros_like(ht))),
        ("grads", lambda *a: dc._grads(*a, cfg),
         (qi, ki, vi, bi, lgc, sgc, m, hs, dhs, vn, dvn, doi)),
        ("layout out (x4)", lambda a, b, c, d: (lay(a), lay(b), lay(c.astype(q.dtype)),
                                                 lay(d)), (dq, dk, dv, doi)),
    ]
    if gated:
        st.append(("gate_grad", gate_grad_tokens, (dlt, ht, jnp.zeros_like(ht))))
    res = _run_stages(st, reps)
    res["sum"] = sum(res.values())
    if _ONLY and "total" not in _ONLY:
        return res
    res["total"] = _total(lambda q, k, v, b, g: pk.delta_product(
        q, k, v, b, gate=g, scale=scale, chunk_size=C, block_v=bv, num_warps=nw,
        chunk_parallel=True, block_v_chunk=_BVC[0] or bv, _layout=layout)[0],
        (q, k, v, beta, g), do, reps)
    return res


def delta_default_stages(shape, C, bv, nw, gated, reps):
    import pallas_kernels as pk
    dp = importlib.import_module("pallas_kernels.delta_product")  # the package exports the fn

    B, T, H, D = shape
    (q, k, v, beta, g), do = _inputs("gated" if gated else "delta", B, T, H, D)
    scale = D ** -0.5
    cfg = (C, scale, gated, *_MODE, bv, nw, True)
    qi, ki, vi, doi = _layout(q), _layout(k[:, :, :, 0]), _layout(v[:, :, :, 0]), _layout(do)
    bi = _layout(beta)
    la = jnp.log(_layout(g[..., None])[..., 0]) if gated else jnp.zeros((B, H, T), F32)
    sa = jnp.ones((B, H, T), F32)
    h0 = jnp.zeros((B, H, D, D), F32)
    lgc, sgc = dp._chunk_cumulative(la, sa, C, gated)
    m = dp._kernel_inverse(ki, bi, lgc, sgc, cfg)
    o, hs, ht = dp._kernel_fwd(qi, ki, vi, bi, lgc, sgc, m, h0, cfg)
    st = [
        ("inverse", lambda *a: dp._kernel_inverse(*a, cfg), (ki, bi, lgc, sgc)),
        ("fwd", lambda *a: dp._kernel_fwd(*a, cfg), (qi, ki, vi, bi, lgc, sgc, m, h0)),
        ("bwd", lambda *a: dp._kernel_bwd(*a, cfg),
         (qi, ki, vi, bi, lgc, sgc, m, hs, doi, jnp.zeros_like(ht))),
    ]
    res = _run_stages(st, reps)
    res["sum"] = sum(res.values())
    res["total"] = _total(lambda q, k, v, b, g: pk.delta_product(
        q, k, v, b, gate=g, scale=scale, chunk_size=C, block_v=bv, num_warps=nw)[0],
        (q, k, v, beta, g), do, reps)
    return res


def _gla_setup(shape):
    """GLA inputs, their scale, and the kernels' head-major views (with log gates)."""
    B, T, H, D = shape
    (q, k, v, g), do = _inputs("gla", B, T, H, D)
    la = jnp.log(_layout(g))
    kern = (_layout(q), _layout(k), _layout(v), _layout(do), la, jnp.ones_like(la),
            jnp.zeros((B, H, D, D), F32))
    return (q, k, v, g), do, D ** -0.5, kern


def gla_chunk_stages(shape, C, bv, nw, gated, reps):
    import pallas_kernels as pk
    from pallas_kernels import gla_chunk as gc_

    del gated
    B, T, H, D = shape
    layout = _LAYOUT[0]
    (q, k, v, g), do = _inputs("gla", B, T, H, D)
    scale = D ** -0.5
    lay = _layout if layout == "bhtd" else (lambda x: x)
    qi, ki, vi, doi = lay(q), lay(k), lay(v), lay(do)
    gi = lay(g).astype(F32)
    h0 = jnp.zeros((B, H, D, D), F32)
    nw = nw or None  # 0: each kernel's own warps (gla_chunk.WARPS)
    cfg = (C, scale, *_MODE, bv, nw, layout, _BVC[0] or D)
    lgc, sgc, gcol = gc_.prep_gates(gi, cfg)
    hs, ht = gc_._sweep(ki, vi, lgc, sgc, gcol, h0, cfg, reverse=False)
    a = gc_._scores(qi, ki, lgc, sgc, cfg)
    dhs, _ = gc_._sweep(qi, doi, lgc, sgc, gcol, jnp.zeros_like(ht), cfg, reverse=True)
    da, dv, dqi, dki = gc_._dv(ki, vi, doi, lgc, sgc, a, hs, dhs, cfg)
    st = [
        ("prep_gates", lambda g: gc_.prep_gates(g, cfg), (gi,)),
        ("sweep", lambda *a: gc_._sweep(*a, cfg, reverse=False), (ki, vi, lgc, sgc, gcol, h0)),
        ("scores", lambda *a: gc_._scores(*a, cfg), (qi, ki, lgc, sgc)),
        ("out", lambda *a: gc_._outputs(*a, cfg), (qi, lgc, sgc, hs, a, vi)),
        ("sweep rev", lambda *a: gc_._sweep(*a, cfg, reverse=True),
         (qi, doi, lgc, sgc, gcol, jnp.zeros_like(ht))),
        ("dv", lambda *a: gc_._dv(*a, cfg), (ki, vi, doi, lgc, sgc, a, hs, dhs)),
        ("dqk", lambda *a: gc_._dqk(*a, cfg), (qi, ki, lgc, sgc, da, dqi, dki)),
        ("gate_grad", lambda *a: gc_._gate_grad(*a, cfg), (dqi, h0, h0)),
    ]
    with cm.tuning(**({} if nw is None else {"num_warps": nw})):  # every kernel of the path
        res = _run_stages(st, reps)
        res["sum"] = sum(res.values())
        res["total"] = _total(lambda q, k, v, g: pk.gated_linear_attention(
            q, k, v, g, scale=scale, chunk_size=C, block_v=bv, num_warps=nw,
            chunk_parallel=True, block_v_chunk=_BVC[0], _layout=layout)[0], (q, k, v, g), do,
            reps)
    return res


def gla_default_stages(shape, C, bv, nw, gated, reps):
    import pallas_kernels as pk
    from pallas_kernels import gla

    del gated
    (q, k, v, g), do, scale, (qi, ki, vi, doi, la, sa, h0) = _gla_setup(shape)
    cfg = (C, scale, *_MODE, bv, nw, True)
    lgc, sgc, gl = gla._prep_gates(la, sa)
    oi = gla._kernel_intra_fwd(qi, ki, vi, lgc, sgc, cfg)
    o, hs, ht = gla._kernel_fwd(qi, ki, vi, lgc, sgc, gl, oi, h0, cfg)
    st = [
        ("prep_gates", gla._prep_gates, (la, sa)),
        ("intra_fwd", lambda *a: gla._kernel_intra_fwd(*a, cfg), (qi, ki, vi, lgc, sgc)),
        ("fwd", lambda *a: gla._kernel_fwd(*a, cfg), (qi, ki, vi, lgc, sgc, gl, oi, h0)),
        ("intra_bwd", lambda *a: gla._kernel_intra_bwd(*a, cfg), (qi, ki, vi, lgc, sgc, doi)),
        ("bwd (incl. intra_bwd)", lambda *a: gla._kernel_bwd(*a, cfg),
         (qi, ki, vi, lgc, sgc, gl, hs, doi, jnp.zeros_like(ht))),
    ]
    res = _run_stages(st, reps)
    res["sum"] = sum(v for n, v in res.items() if n != "intra_bwd")
    res["total"] = _total(lambda q, k, v, g: pk.gated_linear_attention(
        q, k, v, g, scale=scale, chunk_size=C, block_v=bv, num_warps=nw,
        chunk_parallel=False)[0], (q, k, v, g), do, reps)
    return res


def _total(f, xs, do, reps):
    return _time(jax.jit(fwdbwd(f, do)), *xs, reps=reps)


PATHS = {"delta-chunk": delta_chunk_stages, "delta": delta_default_stages,
         "gla-chunk": gla_chunk_stages, "gla": gla_default_stages}


def _knob(spec):
    """`MODULE.NAME[.KEY]=v1,v2` -> (setter, values): values are ints where they parse (0 in a
    WARPS dict means None: the kernel's default), else strings."""
    name, vals = spec.split("=")
    mod, attr, *key = name.split(".")
    target = getattr(importlib.import_module(f"pallas_kernels.{mod}"), attr)

    def parse(v):
        try:
            return int(v)
        except ValueError:
            return v

    def setter(v):
        if key:
            target[key[0]] = v or None
        else:
            target[0] = bool(v) if isinstance(target[0], bool) else v

    return setter, [parse(v) for v in vals.split(",")]


def main(argv=None):
    from experiments.common.cli import int_list, name_list, positive_int

    ap = argparse.ArgumentParser(prog="python -m experiments.bench.stages")
    ap.add_argument("--op", type=name_list(PATHS), default="delta-chunk",
                    help="comma list of " + ", ".join(PATHS))
    ap.add_argument("--shape", type=int_list(), default="8,2048,16,128", help="B,T,H,D")
    ap.add_argument("--chunks", type=int_list(), default="64")
    ap.add_argument("--block-v", type=int_list(), default="64")
    ap.add_argument("--warps", type=int_list(), default="4")
    ap.add_argument("--block-v-chunk", type=positive_int, default=None,
                    help="delta-chunk: value tile of the chunk-parallel kernels (default bv)")
    ap.add_argument("--layout", default="bthd", choices=["bthd", "bhtd"])
    ap.add_argument("--key-tile", type=int_list(minimum=0), default=None,
                    help="gla-chunk: key tiles of the score and dq/dk kernels, e.g. 64,32 (0: all)")
    ap.add_argument("--stages", type=int_list(minimum=0), default="0",
                    help="Triton num_stages overrides to sweep (0: each kernel's own)")
    ap.add_argument("--knob", action="append", default=[],
                    help="MODULE.NAME=v1,v2 or MODULE.NAME.KEY=v1,v2: sweep a module-level "
                         "setting of pallas_kernels.MODULE (a one-element list or a dict), e.g. "
                         "delta_chunk.WARPS.wu=2,4 or delta_chunk.GRAD_SPLIT=1,0; repeatable")
    ap.add_argument("--only", default="", help="comma list of stage names to time (and total)")
    ap.add_argument("--gated", action="store_true", help="delta paths: Gated DeltaNet")
    ap.add_argument("--reps", type=positive_int, default=10)
    ap.add_argument("--json", default=None)
    ap.add_argument("--interpret", action="store_true", help="CPU smoke test (tiny shapes)")
    a = ap.parse_args(argv)
    if len(a.shape) != 4:
        ap.error(f"--shape: expected B,T,H,D (four integers), got {a.shape}")
    try:
        knobs = [_knob(k) for k in a.knob]
    except (ValueError, ImportError, AttributeError) as e:
        ap.error(f"--knob: expected MODULE.NAME[.KEY]=v1,v2 naming a setting of "
                 f"pallas_kernels ({type(e).__name__}: {e})")
    _LAYOUT[0] = a.layout
    _ONLY[:] = [s for s in a.only.split(",") if s]
    _BVC[0] = a.block_v_chunk
    if a.key_tile:
        from pallas_kernels import gla_chunk

        gla_chunk.KEY_TILE.update(zip(("scores", "dqk"), (t or None for t in a.key_tile)))
    if a.interpret:
        _MODE[:] = [True, "cpu"]
    shape = tuple(a.shape)
    results = []
    for op in a.op:
        for C, bv, nw, ns, *kv in itertools.product(
                a.chunks, a.block_v, a.warps, a.stages, *[vals for _, vals in knobs]):
            for (setter, _), v in zip(knobs, kv):
                setter(v)
            tag = " ".join(f"{k.split('=')[0]}={v}" for k, v in zip(a.knob, kv))
            try:
                with cm.tuning(**({"num_stages": ns} if ns else {})):
                    res = PATHS[op](shape, C, bv, nw, a.gated, a.reps)
            except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
                res = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            results.append(dict(op=op, C=C, bv=bv, nw=nw, ns=ns, gated=a.gated,
                                knobs=dict(zip([k.split("=")[0] for k in a.knob], kv)), res=res))
            print(f"== {op} C={C} bv={bv} nw={nw} ns={ns} gated={a.gated} {tag}", flush=True)
            for n, t in res.items():
                print(f"   {n:24s} {t:.3f}" if isinstance(t, float) else f"   {n}: {t}",
                      flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(dict(shape=shape, device=jax.devices()[0].device_kind, results=results),
                      fh)


if __name__ == "__main__":
    sys.exit(main())
