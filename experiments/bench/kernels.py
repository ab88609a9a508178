"""Side-by-side kernel benchmark: our Pallas kernels, our chunked XLA form and fla 0.6.0.

Run on the GPU machine (see ../shared/GPU.md), from the repo root:

    PYTHONPATH=$PWD python3 -m experiments.bench.kernels --out benchmarks/RESULTS.md

It measures, bf16, fwd and fwd+bwd (median of timed calls after warm-up):
DeltaNet and GLA at (B, T, H, d) = (8, 2048, 16, 128) and (4, 8192, 16, 128) for pallas,
chunked (`lrnn.ops`, XLA) and fla (in its own process: fla's Triton/PyTorch must not share the
process with JAX); Gated DeltaNet and DeltaProduct n_h = 2, 3 (ours only); the diagonal
recurrence at (8, 4096, 2048) f32 against `lax.associative_scan`, with effective TB/s against a
measured copy. Peak device memory: XLA's compiled memory analysis (arguments + outputs +
temporaries) for ours, `torch.cuda.max_memory_allocated` for fla. Writes a markdown table.

`python3 -m experiments.bench.kernels fla-worker IN.npz OUT.npz` runs one fla forward+backward
on saved inputs (used by the GPU tests); `fla-bench` times fla and prints JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = [(8, 2048, 16, 128), (4, 8192, 16, 128)]
DIAG_SHAPE = (8, 4096, 2048)


# ============================================================================ fla (torch) side
def _fla_env():
    env = dict(os.environ)
    env.setdefault("TRITON_CACHE_DIR", "/tmp/triton")
    env.setdefault("HOME", "/tmp/home")
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    return env


def _fla_fn(op):
    if op == "deltanet":
        from fla.ops.delta_rule import chunk_delta_rule

        return lambda q, k, v, x, scale: chunk_delta_rule(q, k, v, x, scale=scale)
    if op == "gla":
        from fla.ops.gla import chunk_gla

        return lambda q, k, v, x, scale: chunk_gla(q, k, v, x, scale=scale)
    raise ValueError(op)


def fla_worker(path_in, path_out):
    """fla forward + backward on inputs saved by the GPU tests (float32 arrays of bf16 values)."""
    import numpy as np
    import torch

    d = dict(np.load(path_in))
    op = str(d.pop("op"))
    scale = float(d.pop("scale"))
    dev = "cuda"
    q, k, v = (torch.tensor(d[n], device=dev).to(torch.bfloat16).requires_grad_() for n in "qkv")
    # deltanet: x = beta (bf16) [B, T, H]; gla: x = log gate (f32) [B, T, H, K]
    x = torch.tensor(d["x"], device=dev)
    x = (x.to(torch.bfloat16) if op == "deltanet" else x.float()).requires_grad_()
    o, _ = _fla_fn(op)(q, k, v, x, scale)
    o.backward(torch.tensor(d["do"], device=dev).to(o.dtype))
    out = {"o": o, "dq": q.grad, "dk": k.grad, "dv": v.grad, "dx": x.grad}
    np.savez(path_out, **{n: t.float().detach().cpu().numpy() for n, t in out.items()})


def fla_bench(shapes, reps, ops=("deltanet", "gla")):
    import torch
    import triton

    rows = []
    t_start = time.time()
    for op in ops:
        fn = _fla_fn(op)
        for B, T, H, D in shapes:
            torch.manual_seed(0)
            dev, bf = "cuda", torch.bfloat16
            q = torch.randn(B, T, H, D, device=dev, dtype=bf)
            k = torch.nn.functional.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).to(bf)
            v = torch.randn(B, T, H, D, device=dev, dtype=bf)
            if op == "deltanet":
                x = torch.rand(B, T, H, device=dev, dtype=bf)
            else:
                x = torch.nn.functional.logsigmoid(torch.randn(B, T, H, D, device=dev) + 3.0)
            for t in (q, k, v, x):
                t.requires_grad_()
            do = torch.randn(B, T, H, D, device=dev, dtype=bf)
            scale = D ** -0.5
            f_fwd = lambda fn=fn, a=(q, k, v, x, scale): fn(*a)
            f_bwd = lambda fn=fn, a=(q, k, v, x, scale), do=do: fn(*a)[0].backward(do)
            print(f"fla {op} {B, T, H, D}: first calls (autotune) ...", file=sys.stderr, flush=True)
            f_fwd(), f_bwd()
            torch.cuda.synchronize()
            print(f"fla {op}: autotuned at {time.time() - t_start:.0f} s", file=sys.stderr,
                  flush=True)
            torch.cuda.reset_peak_memory_stats()
            f_bwd()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            t_f = triton.testing.do_bench(f_fwd, warmup=25, rep=reps, return_mode="median")
            t_b = triton.testing.do_bench(f_bwd, warmup=25, rep=reps, return_mode="median")
            rows.append(dict(op=op, shape=[B, T, H, D], fwd=t_f, fwdbwd=t_b, peak=peak))
            print("FLAROW " + json.dumps(rows[-1]), flush=True)
    return dict(rows=rows, torch=torch.__version__, triton=triton.__version__)


# ============================================================================ JAX side
def _time(fn, *args, reps=20, warm=3):
    import jax

    for _ in range(warm):
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def _peak(fn, *args):
    try:
        m = fn.lower(*args).compile().memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _inputs(kind, B, T, H, D, n_h=1, seed=0):
    import jax
    import jax.numpy as jnp

    ks = jax.random.split(jax.random.key(seed), 8)
    bf = jnp.bfloat16
    q = jax.random.normal(ks[0], (B, T, H, D), bf)
    do = jax.random.normal(ks[7], (B, T, H, D), bf)
    if kind == "gla":
        k = jax.random.normal(ks[1], (B, T, H, D), bf)
        v = jax.random.normal(ks[2], (B, T, H, D), bf)
        g = jax.nn.sigmoid(jax.random.normal(ks[3], (B, T, H, D)) + 3.0)
        return (q, k, v, g), do
    k = jax.random.normal(ks[1], (B, T, H, n_h, D))
    k = (k / jnp.linalg.norm(k, axis=-1, keepdims=True)).astype(bf)
    v = jax.random.normal(ks[2], (B, T, H, n_h, D), bf)
    beta = jax.random.uniform(ks[3], (B, T, H, n_h), bf)
    g = jax.nn.sigmoid(jax.random.normal(ks[4], (B, T, H)) + 3.0) if kind == "gated" else None
    return (q, k, v, beta, g), do


def _ours(kind, impl):
    import pallas_kernels as pk
    from lrnn import ops

    def f(*xs):
        # "pallas" is lrnn.ops' pallas path with the kernels' defaults (on GPU for bf16: the
        # chunk-parallel delta and GLA kernels); "pallas-seq" rows are the previous defaults
        # (sequential-chunk delta kernels; split-intra GLA kernels).
        if kind != "gla" and impl == "pallas-seq":  # delta kernels: the sequential-chunk form
            q, k, v, beta, g = xs
            return pk.delta_product(q, k, v, beta, gate=g, scale=q.shape[-1] ** -0.5,
                                    chunk_parallel=False)[0]
        if kind == "gla" and impl == "pallas-seq":  # pallas_kernels.gla, split_intra
            q, k, v, g = xs
            return pk.gated_linear_attention(q, k, v, g, scale=q.shape[-1] ** -0.5,
                                             chunk_parallel=False)[0]
        if kind == "gla":
            q, k, v, g = xs
            return ops.gated_linear_attention(q, k, v, g, scale=q.shape[-1] ** -0.5,
                                              implementation=impl)[0]
        q, k, v, beta, g = xs
        return ops.delta_product(q, k, v, beta, gate=g, scale=q.shape[-1] ** -0.5,
                                 implementation=impl)[0]

    return f


def fwdbwd(f, do):
    """`xs -> vjp of f at xs, applied to do`, for the inputs that are not None (a missing
    gate stays None)."""
    import jax

    def run(*xs):
        idx = [i for i, x in enumerate(xs) if x is not None]

        def g(*d):
            full = list(xs)
            for i, di in zip(idx, d):
                full[i] = di
            return f(*full)

        return jax.vjp(g, *[xs[i] for i in idx])[1](do)

    return run


def bench_ours(kind, impl, B, T, H, D, n_h=1, reps=20):
    import jax

    xs, do = _inputs(kind, B, T, H, D, n_h)
    f = _ours(kind, impl)
    jf, jb = jax.jit(f), jax.jit(fwdbwd(f, do))
    return dict(fwd=_time(jf, *xs, reps=reps), fwdbwd=_time(jb, *xs, reps=reps),
                peak=_peak(jb, *xs))


def bench_diag(reps=20):
    import jax
    import jax.numpy as jnp

    import pallas_kernels as pk
    from lrnn import ops

    B, T, D = DIAG_SHAPE
    ka, kb = jax.random.split(jax.random.key(1))
    a = jax.random.uniform(ka, (B, T, D), jnp.float32, -1.0, 1.0)
    b = jax.random.normal(kb, (B, T, D), jnp.float32)
    nbytes = 3 * a.size * 4
    out = {}
    x = jnp.ones((256 * 1024 * 1024,), jnp.float32)  # 1 GiB
    t = _time(jax.jit(lambda x: x + 1.0), x, reps=reps)
    out["copy"] = dict(ms=t, tbps=2 * x.size * 4 / t / 1e9)
    del x

    def assoc(a, b):
        def comb(e1, e2):
            return e1[0] * e2[0], e2[0] * e1[1] + e2[1]

        return jax.lax.associative_scan(comb, (a, b), axis=1)[1]

    t = _time(jax.jit(assoc), a, b, reps=reps)
    out["associative_scan"] = dict(ms=t, tbps=nbytes / t / 1e9)
    t = _time(jax.jit(lambda a, b: ops.linear_recurrence(a, b, implementation="chunked")), a, b,
              reps=reps)
    out["chunked"] = dict(ms=t, tbps=nbytes / t / 1e9)
    best, configs = None, []
    configs += [(bd, nw, None, False) for bd in (64, 128) for nw in (1, 2)]  # one row a step
    # tiles, steps unrolled row by row (the previous default: bd 64, nw 2, bt 32)
    configs += [(bd, 2, bt, False) for bd in (64, 128) for bt in (16, 32)]
    # tiles as one log-depth scan each (tile_scan, the GPU default)
    configs += [(bd, nw, bt, True) for bd in (16, 32, 64) for nw in (1, 2, 4)
                for bt in (64, 128, 256)]
    for bd, nw, bt, scan in configs:
        name = f"pallas bd={bd} nw={nw} bt={bt}" + (" scan" if scan else "")
        try:
            fn = jax.jit(lambda a, b, bd=bd, nw=nw, bt=bt, scan=scan: pk.linear_recurrence(
                a, b, block_d=bd, num_warps=nw, block_t=bt, tile_scan=scan))
            t = _time(fn, a, b, reps=reps)
        except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
            print(f"diag {name} failed: {type(e).__name__}: {e}"[:300])
            continue
        out[name] = dict(ms=t, tbps=nbytes / t / 1e9)
        if best is None or t < out[best[0]]["ms"]:
            best = (name, bd, nw, bt, scan)
    out["best"] = None if best is None else best[0]
    if best is not None:
        _, bd, nw, bt, scan = best

        def fb_default(a, b):  # the defaults of linear_recurrence on this device
            h, vjp = jax.vjp(pk.linear_recurrence, a, b)
            return vjp(h)

        out["pallas fwd+bwd"] = dict(ms=_time(jax.jit(fb_default), a, b, reps=reps))
        # the backward's own tile (block_t_bwd), with the best forward tiles
        for btb in (16, 32, 64):
            def fbb(a, b, btb=btb):
                h, vjp = jax.vjp(lambda a, b: pk.linear_recurrence(
                    a, b, block_d=bd, num_warps=nw, block_t=bt, tile_scan=scan,
                    block_t_bwd=btb), a, b)
                return vjp(h)

            out[f"pallas fwd+bwd ({best[0][7:]}, block_t_bwd={btb})"] = dict(
                ms=_time(jax.jit(fbb), a, b, reps=reps))
    return out


# the rows ``main`` measures: op names and implementations (for --ops / --impls)
OPS = ("deltanet", "gla", "gated_deltanet", "deltaproduct_nh2", "deltaproduct_nh3")
IMPLS = ("pallas", "chunked", "pallas-seq")


def main(argv=None):
    from experiments.common.cli import int_list, name_list, positive_int

    ap = argparse.ArgumentParser(prog="python -m experiments.bench.kernels")
    ap.add_argument("mode", nargs="?", default="bench",
                    choices=["bench", "fla-worker", "fla-bench", "report", "diag"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--out", default="benchmarks/RESULTS.md")
    ap.add_argument("--raw", default=None, help="JSON file of our raw numbers (written/read)")
    ap.add_argument("--fla-json", default=None, help="JSON of fla numbers (written/read)")
    ap.add_argument("--diag-json", default=None, help="report: diagonal rows from `diag --raw`")
    ap.add_argument("--reps", type=positive_int, default=20)
    ap.add_argument("--fla", action="store_true", help="also run fla (subprocess) first")
    ap.add_argument("--quick", action="store_true", help="first shape only")
    ap.add_argument("--shapes", type=int_list(minimum=0), default=None,
                    help=f"comma list of indices into SHAPES (0..{len(SHAPES) - 1})")
    ap.add_argument("--fla-ops", type=name_list(("deltanet", "gla")), default=["deltanet", "gla"],
                    help="fla-bench: ops to time")
    ap.add_argument("--no-chunked", action="store_true",
                    help="skip the XLA chunked rows (their compile is slow at these shapes)")
    ap.add_argument("--impls", type=name_list(IMPLS), default=None,
                    help="comma list: only these impl rows (" + ", ".join(IMPLS) + ")")
    ap.add_argument("--ops", type=name_list(OPS), default=None,
                    help="comma list: only these ops (" + ", ".join(OPS) + ")")
    ap.add_argument("--no-diag", action="store_true", help="skip the diagonal recurrence")
    a = ap.parse_args(argv)
    if a.mode == "fla-worker":
        if len(a.args) != 2:
            ap.error("fla-worker takes two paths: IN.npz OUT.npz")
        fla_worker(*a.args)
        return
    if a.args:
        ap.error(f"unexpected arguments {a.args} (only fla-worker takes paths)")
    shapes = SHAPES[:1] if a.quick else SHAPES
    if a.shapes is not None:
        bad = [i for i in a.shapes if i >= len(SHAPES)]
        if bad:
            ap.error(f"--shapes: index {bad[0]} out of range; SHAPES has {len(SHAPES)}")
        shapes = [SHAPES[i] for i in a.shapes]
    if a.mode == "report":
        if not a.raw:
            ap.error("report needs --raw RAW.json[,RAW2.json...]")
        for path in [*a.raw.split(","), *filter(None, (a.diag_json,))]:
            if not os.path.isfile(path):
                ap.error(f"report: no such file {path!r}")
    if a.mode == "diag":
        diag = bench_diag(a.reps)
        print("DIAGJSON " + json.dumps(diag))
        if a.raw:
            with open(a.raw, "w") as fh:
                json.dump(diag, fh)
        return
    if a.mode == "fla-bench":
        res = fla_bench(shapes, 100, tuple(a.fla_ops))
        if a.fla_json:
            with open(a.fla_json, "w") as fh:
                json.dump(res, fh)
        print("FLAJSON " + json.dumps(res))
        return
    fla = None
    if a.fla_json and os.path.exists(a.fla_json):
        with open(a.fla_json) as fh:
            fla = json.load(fh)
    if a.mode == "report":  # --raw: one JSON or a comma list (one device call per shape)
        raws = []
        for path in a.raw.split(","):
            with open(path) as fh:
                raws.append(json.load(fh))
        diag = next((r["diag"] for r in raws if r.get("diag")), {})
        if a.diag_json:
            with open(a.diag_json) as fh:
                diag = json.load(fh)
        meta = dict(raws[-1]["meta"])
        base = os.path.basename
        # raws after the first two re-measure some rows: say which, for the command line
        again = [dict(raw=base(p), ops=sorted({r["op"] for r in rw["rows"]}),
                      shapes=sorted({SHAPES.index(tuple(r["shape"])) for r in rw["rows"]}))
                 for p, rw in list(zip(a.raw.split(","), raws))[2:]]
        meta["sources"] = dict(raw=[base(p) for p in a.raw.split(",")], again=again,
                               **({"diag": base(a.diag_json)} if a.diag_json else {}),
                               **({"fla": base(a.fla_json)} if a.fla_json else {}))
        if len(raws) > 1:
            meta["date"] = f"{raws[0]['meta']['date']} to {raws[-1]['meta']['date']}"
        write_results(a.out, merge_rows(raws), fla, diag, meta)
        return
    if a.fla:  # fla first, in its own process, before JAX takes the GPU
        cmd = [sys.executable, "-m", "experiments.bench.kernels", "fla-bench"]
        cmd += ["--quick"] if a.quick else []
        r = subprocess.run(cmd, capture_output=True, text=True, env=_fla_env(), timeout=500)
        line = [s for s in r.stdout.splitlines() if s.startswith("FLAJSON ")]
        if line:
            fla = json.loads(line[0][8:])
        else:
            print("fla failed:", r.stderr[-3000:])

    import jax

    rows = []

    keep_impl = None if a.impls is None else set(a.impls)
    keep_op = None if a.ops is None else set(a.ops)

    def run(name, kind, impl, shape, n_h=1):
        if (keep_impl and impl not in keep_impl) or (keep_op and name not in keep_op):
            return
        try:
            res = bench_ours(kind, impl, *shape, n_h=n_h, reps=a.reps)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{name} {impl} {shape} failed: {type(e).__name__}: {str(e)[:400]}")
            res = None
        rows.append(dict(op=name, impl=impl, shape=list(shape), res=res))
        print(name, impl, shape, res, flush=True)

    impls = ("pallas",) if a.no_chunked else ("pallas", "chunked")
    for shape in shapes:
        for impl in impls:
            run("deltanet", "delta", impl, shape)
            run("gla", "gla", impl, shape)
        run("deltanet", "delta", "pallas-seq", shape)
        run("gla", "gla", "pallas-seq", shape)
        run("gated_deltanet", "gated", "pallas", shape)
        run("gated_deltanet", "gated", "pallas-seq", shape)
        run("deltaproduct_nh2", "delta", "pallas", shape, n_h=2)
        run("deltaproduct_nh3", "delta", "pallas", shape, n_h=3)
    diag = {} if a.no_diag else bench_diag(a.reps)
    print(json.dumps(diag, indent=1))
    meta = dict(device=f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
                jax=jax.__version__,
                date=f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    if a.raw:
        with open(a.raw, "w") as fh:
            json.dump(dict(rows=rows, diag=diag, meta=meta), fh)
    write_results(a.out, rows, fla, diag, meta)


def merge_rows(raws):
    """The rows of several raw JSONs in order; a row measured again in a later raw (same op,
    impl and shape) replaces the earlier one in place and is marked with its raw's date."""
    rows, where = [], {}
    for raw in raws:
        for row in raw["rows"]:
            key = (row["op"], row["impl"], tuple(row["shape"]))
            if key in where:
                rows[where[key]] = dict(row, remeasured=raw["meta"]["date"])
            else:
                where[key] = len(rows)
                rows.append(row)
    return rows


def write_results(path, rows, fla, diag, meta):
    fl = {(r["op"], tuple(r["shape"])): r for r in (fla["rows"] if fla else [])}
    mib = lambda b: "-" if b is None else f"{b / 2**20:.0f}"
    src = meta.get("sources", {})
    raws = src.get("raw", ["ours0.json", "ours1.json"])
    versions = f"jax {meta['jax']}"
    versions += (f", torch {fla['torch']}, triton {fla['triton']}, fla 0.6.0" if fla
                 else ", fla: not run")
    lines = [
        "# Kernel benchmark",
        "",
        f"- date: {meta['date']}",
        f"- device: {meta['device']}",
        f"- versions: {versions}",
        "- commands (device tool, one call each for the 10-minute limit; raw JSONs in "
        "benchmarks/kernels/): `PYTHONPATH=$PWD python3 -m experiments.bench.kernels "
        f"--no-chunked --no-diag --shapes 0 --raw {raws[0]}`, the same with `--shapes 1 --raw "
        f"{raws[min(1, len(raws) - 1)]}`, `... kernels diag --raw "
        f"{src.get('diag', 'diag.json')}` and, in its own "
        f"process, `... kernels fla-bench --fla-json {src.get('fla', 'fla.json')}`; then "
        f"`python3 -m experiments.bench.kernels report --raw {','.join(raws)} --diag-json "
        f"{src.get('diag', 'diag.json')} --fla-json {src.get('fla', 'fla.json')}` (a row "
        "measured again in a later raw replaces the earlier one and names its time)"
        + ("; the re-measured rows: " + ", ".join(
            f"`... kernels --no-chunked --no-diag --impls pallas --ops {','.join(g['ops'])} "
            f"--shapes {','.join(map(str, g['shapes']))} --raw {g['raw']}`"
            for g in src["again"]) if src.get("again") else ""),
        "- bf16 inputs, f32 accumulation; median ms; ratio = fla time / our time "
        "(> 1: we are faster); peak = arguments + outputs + temporaries of the fwd+bwd "
        "program (XLA memory analysis) / `torch.cuda.max_memory_allocated` for fla",
        "",
        "| op | B, T, H, d | impl | fwd ms | fwd+bwd ms | fla fwd ms | fla fwd+bwd ms "
        "| ratio fwd | ratio fwd+bwd | peak MiB | fla peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        res, f = r["res"], fl.get((r["op"], tuple(r["shape"])))
        shape = ", ".join(map(str, r["shape"]))
        if res is None:
            lines.append(f"| {r['op']} | {shape} | {r['impl']} | failed | | | | | | | |")
            continue
        cells = [f"{res['fwd']:.3f}", f"{res['fwdbwd']:.3f}"]
        if f:
            cells += [f"{f['fwd']:.3f}", f"{f['fwdbwd']:.3f}", f"{f['fwd'] / res['fwd']:.2f}",
                      f"{f['fwdbwd'] / res['fwdbwd']:.2f}", mib(res["peak"]), mib(f["peak"])]
        else:
            cells += ["-", "-", "-", "-", mib(res["peak"]), "-"]
        impl = r["impl"] + (f" (measured {r['remeasured']})" if r.get("remeasured") else "")
        lines.append(f"| {r['op']} | {shape} | {impl} | " + " | ".join(cells) + " |")
    lines += ["", f"## Diagonal recurrence, f32, (B, T, D) = {DIAG_SHAPE}", "",
              "effective TB/s = (read a, b + write h) / time; copy = `x + 1` on 1 GiB "
              "(read + write)", "", "| impl | ms | TB/s | % of copy |", "|---|---|---|---|"]
    copy = diag.get("copy", {}).get("tbps")
    for name, d in diag.items():
        if not isinstance(d, dict):
            continue
        tb = d.get("tbps")
        lines.append(f"| {name} | {d['ms']:.3f} | " + ("-" if tb is None else f"{tb:.2f}")
                     + " | " + ("-" if tb is None or copy is None else f"{100 * tb / copy:.0f}%")
                     + " |")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # its own section: RESULTS.md also holds the hand-written analysis and the multigpu tables
    from experiments.bench.multigpu import write_results as write_section

    write_section(path, "\n".join(lines) + "\n", begin="<!-- kernels begin -->",
                  end="<!-- kernels end -->")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
