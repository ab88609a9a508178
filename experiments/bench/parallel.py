"""Sequence parallelism on CPU devices: bytes exchanged per device and time, vs P and T.

Run from the repo root (8 virtual CPU devices are created before JAX starts):

    PYTHONPATH=$PWD .venv/bin/python -m experiments.bench.parallel --out benchmarks/parallel_cpu.md

For each op (gated linear attention with a per-head gate, the delta rule), each exchange
("all_gather", "ppermute"), P in {1, 2, 4, 8} devices and several lengths T, it compiles the
sequence-sharded op (``lrnn.parallel.sequence_sharded``, chunked implementation) forward and
forward+backward, reads every collective in the compiled HLO and sums the bytes each device
moves:

* all-gather: bytes received, ``(P - 1) / P`` x the result;
* collective-permute: bytes sent by a sending device, the result's size;
* all-reduce: a ring all-reduce, ``2 (P - 1) / P`` x the result;
* reduce-scatter: ``(P - 1)`` x the result (the operand is P results).

The count is per device and per call; collectives inside loops would count once (there are
none: the chunk loops are local). It also gives ``lrnn.parallel.exchange_bytes``, the count
from the summary shapes, and the median wall time of timed calls after a warm-up. The bytes
must not depend on T.

Timing caveat: the P devices are virtual CPU devices sharing this machine's cores, so the times
show the overhead of the exchange, not a speed-up; real speed-ups need real devices.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import time

N_DEVICES = 8
if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={N_DEVICES}"

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import lrnn  # noqa: E402
import lrnn.ops  # noqa: E402
from lrnn import parallel  # noqa: E402

_DTYPE_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1,
                "s64": 8, "u8": 1, "s8": 1}
_SHAPE = re.compile(r"\b(f32|f64|bf16|f16|s32|u32|s64|pred|u8|s8)\[([0-9,]*)\]")
_COLLECTIVES = ("all-gather", "collective-permute", "all-reduce", "reduce-scatter")


def _shape_bytes(text: str) -> int:
    total = 0
    for dt, dims in _SHAPE.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES[dt]
    return total


def _group_size(line: str, default: int) -> int:
    m = re.search(r"replica_groups=\{\{([0-9,]+)\}", line)
    return len(m.group(1).split(",")) if m else default


def hlo_collective_bytes(hlo: str, n_shards: int) -> dict[str, float]:
    """Bytes one device moves per call, by collective kind, from compiled HLO text.

    Compiled HLO prints the operands of an instruction without their shapes, so everything is
    derived from the result shape and the group size g: all-gather receives
    ``(g - 1) / g x result``; collective-permute sends its result's size (the largest any one
    device sends); all-reduce moves ``2 (g - 1) / g x result`` on a ring; reduce-scatter
    ``(g - 1) x result`` (its operand is g results).
    """
    out = {k: 0.0 for k in _COLLECTIVES}
    counts = {k: 0 for k in _COLLECTIVES}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([\w\-]+)\(", line)
        if not m:
            continue
        result, opname = m.groups()
        kind = opname.removesuffix("-start")
        if kind not in _COLLECTIVES or opname.endswith("-done"):
            continue
        r_bytes = _shape_bytes(result)
        if opname.endswith("-start"):  # async: the result tuple also holds the operand(s)
            r_bytes //= 2
        g = _group_size(line, n_shards)
        if kind == "all-gather":
            out[kind] += (g - 1) / g * r_bytes
        elif kind == "collective-permute":
            out[kind] += r_bytes
        elif kind == "all-reduce":
            out[kind] += 2 * (g - 1) / g * r_bytes
        else:
            out[kind] += (g - 1) * r_bytes
        counts[kind] += 1
    out["total"] = sum(out[k] for k in _COLLECTIVES)
    out["ops"] = sum(counts.values())
    return out


def make_inputs(op: str, b: int, t: int, h: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    q = rng.normal(size=(b, t, h, d)).astype(f32)
    k = rng.normal(size=(b, t, h, d)).astype(f32)
    v = rng.normal(size=(b, t, h, d)).astype(f32)
    S0 = rng.normal(size=(b, h, d, d)).astype(f32)
    if op == "gla":
        gate = rng.uniform(-1, 1, (b, t, h)).astype(f32)
        return lrnn.ops.gated_linear_attention, (q, k, v, gate), S0, lrnn.DIAGONAL
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    beta = rng.uniform(0, 2, (b, t, h)).astype(f32)
    return lrnn.ops.delta_rule, (q, k, v, beta), S0, lrnn.DENSE


def summary_struct(op, b, h, d):
    s = jax.ShapeDtypeStruct
    a = (b, h, d) if op == "gla" else (b, h, d, d)
    return lrnn.Affine(s(a, jnp.float32), s((b, h, d, d), jnp.float32))


def time_call(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_one(op, exchange, p, t, args_ns, repeats):
    b, h, d, chunk = args_ns.batch, args_ns.heads, args_ns.dim, args_ns.chunk
    fn, seq, S0, monoid = make_inputs(op, b, t, h, d)
    fn = functools.partial(fn, implementation="chunked", chunk_size=chunk)
    mesh = jax.make_mesh((p,), ("seq",), devices=jax.devices()[:p])
    sharded = parallel.sequence_sharded(fn, mesh, exchange=exchange)
    seq_g = [jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P(None, "seq")))
             for x in seq]
    S0_g = jax.device_put(S0, jax.sharding.NamedSharding(mesh, jax.P()))

    def fwd(*xs):
        return sharded(*xs[:-1], initial_state=xs[-1])

    def loss(*xs):
        o, S = fwd(*xs)
        return jnp.sum(o) + jnp.sum(S)

    fwdbwd = jax.grad(loss, argnums=tuple(range(len(seq) + 1)))
    row = {"op": op, "exchange": exchange, "P": p, "T": t}
    with jax.set_mesh(mesh):
        for name, f in (("fwd", fwd), ("fwdbwd", fwdbwd)):
            jf = jax.jit(f)
            compiled = jf.lower(*seq_g, S0_g).compile()
            row[f"{name}_bytes"] = hlo_collective_bytes(compiled.as_text(), p)["total"]
            row[f"{name}_ms"] = 1e3 * time_call(compiled, (*seq_g, S0_g), repeats)
    counted = parallel.exchange_bytes(monoid, summary_struct(op, b, h, d), p, exchange)
    row["counted_bytes"] = counted["total"]
    return row


def write_markdown(rows, args_ns, path):
    dev = jax.devices()[0]
    lines = [
        "# Sequence parallelism on CPU devices: bytes exchanged and time",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        f"- device: {len(jax.devices())} virtual {dev.platform.upper()} devices on "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}); "
        "the P devices share these cores",
        f"- versions: jax {jax.__version__}, Python {platform.python_version()}",
        f"- shapes: B = {args_ns.batch}, H = {args_ns.heads}, dk = dv = {args_ns.dim}, "
        f"chunk = {args_ns.chunk}, float32, chunked implementation, initial state given",
        f"- command: `PYTHONPATH=$PWD .venv/bin/python -m experiments.bench.parallel "
        f"{' '.join(sys.argv[1:])}`",
        "- bytes: per device per call, summed over the collectives of the compiled HLO "
        "(all-gather: received, (P-1)/P x result; collective-permute: sent, the result; "
        "all-reduce: 2(P-1)/P x result; reduce-scatter: (P-1) x result). `counted`: "
        "`lrnn.parallel.exchange_bytes` of the forward pass (summary exchange + final-state "
        "broadcast).",
        f"- time: median of {args_ns.repeats} calls after a warm-up. Virtual devices share "
        "the cores, so time measures the exchange's overhead, not a speed-up.",
        "",
        "| op | exchange | P | T | fwd bytes (HLO) | counted | fwd+bwd bytes (HLO) | "
        "fwd ms | fwd+bwd ms | fwd ms / P=1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {(r["op"], r["T"]): r["fwd_ms"] for r in rows if r["P"] == 1}
    for r in rows:
        ratio = r["fwd_ms"] / base[(r["op"], r["T"])] if (r["op"], r["T"]) in base else float("nan")
        lines.append(
            f"| {r['op']} | {r['exchange']} | {r['P']} | {r['T']} | {r['fwd_bytes']:.0f} | "
            f"{r['counted_bytes']:.0f} | {r['fwdbwd_bytes']:.0f} | {r['fwd_ms']:.2f} | "
            f"{r['fwdbwd_ms']:.2f} | {ratio:.2f} |"
        )
    # The claim the table supports: bytes per device do not grow with T.
    lines += ["", "Bytes per device against T (forward, HLO), per op / exchange / P:", ""]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["op"], r["exchange"], r["P"]), set()).add(r["fwd_bytes"])
    flat = all(len(v) == 1 for v in groups.values())
    lines.append(
        "- constant in T for every op, exchange and P" if flat
        else "- NOT constant in T: " + ", ".join(f"{k}: {sorted(v)}" for k, v in groups.items()
                                                  if len(v) > 1)
    )
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return flat


def main(argv=None):
    from experiments.common.cli import int_list, name_list, positive_int

    ap = argparse.ArgumentParser(prog="python -m experiments.bench.parallel",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=name_list(("gla", "delta_rule")), default="gla,delta_rule")
    ap.add_argument("--devices", type=int_list(), default="1,2,4,8", help="values of P")
    ap.add_argument("--lengths", type=int_list(), default="1024,4096,16384", help="values of T")
    ap.add_argument("--batch", type=positive_int, default=1)
    ap.add_argument("--heads", type=positive_int, default=2)
    ap.add_argument("--dim", type=positive_int, default=32)
    ap.add_argument("--chunk", type=positive_int, default=64)
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--out", default="benchmarks/parallel_cpu.md")
    a = ap.parse_args(argv)
    ops, ps, ts = a.ops, a.devices, a.lengths
    if max(ps) > len(jax.devices()):
        ap.error(f"--devices asks for {max(ps)} devices, JAX has {len(jax.devices())}")
    bad = [(t, p) for t in ts for p in ps if t % p]
    if bad:
        ap.error(f"--lengths {bad[0][0]} is not a multiple of --devices {bad[0][1]} (each "
                 "device holds T / P tokens)")
    cases = [(op, ex, p, t) for op in ops for p in ps for ex in parallel.EXCHANGES
             for t in ts if not (p == 1 and ex == "ppermute")]
    rows = []
    for op, ex, p, t in tqdm(cases, desc="parallel bench"):
        rows.append(run_one(op, ex, p, t, a, a.repeats))
    flat = write_markdown(rows, a, a.out)
    print(open(a.out).read())
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
