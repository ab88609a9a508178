"""Sequence-parallel scaling over several devices: weak and strong, both exchanges.

On a machine with several GPUs (the device tool's ``nvidia-h200-x2`` / ``-x4``)::

    JAX_PLATFORMS=cuda python -m experiments.bench.multigpu            # P in {1, 2, 4}
    JAX_PLATFORMS=cuda python -m experiments.bench.multigpu --P 1 2 --reps 10

For DeltaNet (``lrnn.ops.delta_rule``) and GLA (``lrnn.ops.gated_linear_attention``, per-key
gates), forward + backward in bfloat16 at ``B, H, d = 4, 16, 128``, each exchange
(``all_gather``, ``ppermute``) and each device count P (the first P devices, one mesh axis
``seq``; P = 1 is the plain single-device call):

* weak scaling: T = ``--t-per-device`` x P (8192 per device), time per step and
  ``t(P) / t(1)`` (1.0 is perfect);
* strong scaling: T = ``--strong-t`` (65536) in total, ``t(P)`` and the speed-up
  ``t(1) / t(P)`` (P is perfect).

Times are medians of ``--reps`` calls of the jitted step after warm-up calls. The markdown
table (date, devices, versions, shapes) goes to ``--out`` and, between the markers
``<!-- multigpu begin -->`` / ``<!-- multigpu end -->``, into ``--results``
(``benchmarks/RESULTS.md``; appended when the markers are missing). On CPU the script runs
with virtual devices (``--cpu-devices``) at small sizes, which checks it end to end but
measures nothing about scaling (the devices share the same cores).

The state-tracking training run on a (data, seq) mesh against one device, with the loss
curves compared, is ``python -m experiments.bench.multigpu_train``. Results on 4 H200s:
``benchmarks/multigpu.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys

if __name__ == "__main__":  # virtual CPU devices must be requested before JAX starts
    from experiments.bench._devices import request_cpu_devices

    request_cpu_devices()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from experiments.bench.kernels import _time as median_ms  # noqa: E402
from lrnn import ops, parallel  # noqa: E402

__all__ = ["Config", "run", "markdown", "main"]

BEGIN, END = "<!-- multigpu begin -->", "<!-- multigpu end -->"


@dataclasses.dataclass(frozen=True)
class Config:
    ops: tuple[str, ...] = ("deltanet", "gla")
    P: tuple[int, ...] = (1, 2, 4)  # device counts (those above the devices present are skipped)
    exchanges: tuple[str, ...] = ("all_gather", "ppermute")
    scalings: tuple[str, ...] = ("weak", "strong")
    t_per_device: int = 8192  # weak scaling
    strong_t: int = 65536  # strong scaling (total)
    batch: int = 4
    heads: int = 16
    dim: int = 128  # dk = dv
    implementation: str = "auto"  # lrnn.ops implementation (pallas on GPU, chunked on CPU)
    chunk_size: int = 64
    reps: int = 10
    warmup: int = 2
    dtype: str = "bfloat16"


def _inputs(op, B, T, H, D, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (B, T, H, D), dtype)
    k = jax.random.normal(ks[1], (B, T, H, D))
    k = (k / jnp.linalg.norm(k, axis=-1, keepdims=True)).astype(dtype)
    v = jax.random.normal(ks[2], (B, T, H, D), dtype)
    if op == "gla":
        x = jax.nn.sigmoid(jax.random.normal(ks[3], (B, T, H, D)) + 3.0).astype(dtype)
    else:
        x = jax.random.uniform(ks[3], (B, T, H), dtype)  # beta
    do = jax.random.normal(ks[4], (B, T, H, D), dtype)
    return (q, k, v, x), do


def _op(op, cfg: Config):
    fn = ops.gated_linear_attention if op == "gla" else ops.delta_rule

    def f(q, k, v, x, **kw):
        return fn(q, k, v, x, scale=q.shape[-1] ** -0.5, chunk_size=cfg.chunk_size,
                  implementation=cfg.implementation, **kw)[0]

    return f


def _step(op, cfg: Config, P: int, exchange: str):
    """The jitted forward + backward step and the sharding of its inputs (None for P = 1)."""
    f = _op(op, cfg)
    if P > 1:
        mesh = Mesh(jax.devices()[:P], ("seq",))
        # check_vma=False: the Pallas kernels run per shard (see pallas_kernels._common)
        f = parallel.sequence_sharded(f, mesh, "seq", exchange=exchange, check_vma=False)
        sharding = NamedSharding(mesh, jax.P(None, "seq"))
    else:
        sharding = None

    def fwd_bwd(xs, do):
        o, vjp = jax.vjp(lambda *a: f(*a), *xs)
        return vjp(do)

    return jax.jit(fwd_bwd), sharding


def _measure(op, cfg: Config, P: int, exchange: str, T: int) -> float:
    dt = jnp.dtype(cfg.dtype)
    xs, do = _inputs(op, cfg.batch, T, cfg.heads, cfg.dim, dt)
    step, sharding = _step(op, cfg, P, exchange)
    if sharding is not None:
        xs = tuple(jax.device_put(x, sharding) for x in xs)
        do = jax.device_put(do, sharding)
    return median_ms(step, xs, do, reps=cfg.reps, warm=cfg.warmup)


def run(cfg: Config, on_row=None) -> list[dict]:
    """Rows ``{op, scaling, exchange, P, T, ms, ratio}`` (ratio: weak ``t(P)/t(1)``, strong
    ``t(1)/t(P)``)."""
    n_dev = len(jax.devices())
    Ps = [p for p in cfg.P if p <= n_dev]
    skipped = [p for p in cfg.P if p > n_dev]
    if skipped:
        print(f"multigpu: only {n_dev} devices; skipping P = {skipped}", file=sys.stderr)
    jobs = []
    for op in cfg.ops:
        for scaling in cfg.scalings:
            for P in Ps:
                T = cfg.t_per_device * P if scaling == "weak" else cfg.strong_t
                if scaling == "strong" and T % P:
                    raise ValueError(f"strong_t = {T} is not a multiple of P = {P}")
                for ex in (cfg.exchanges if P > 1 else ("-",)):
                    jobs.append((op, scaling, ex, P, T))
    rows, base = [], {}
    for op, scaling, ex, P, T in tqdm(jobs, desc="multigpu"):
        ms = _measure(op, cfg, P, ex if P > 1 else "all_gather", T)
        if P == 1:
            base[(op, scaling)] = ms
        b = base.get((op, scaling))
        ratio = None if b is None else (ms / b if scaling == "weak" else b / ms)
        rows.append(dict(op=op, scaling=scaling, exchange=ex, P=P, T=T, ms=ms, ratio=ratio))
        if on_row is not None:
            on_row(rows)
    return rows


def _versions() -> str:
    import jaxlib

    return (f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
            f"Python {platform.python_version()}")


def markdown(cfg: Config, rows: list[dict]) -> str:
    devs = jax.devices()
    kinds = sorted({d.device_kind for d in devs})
    lines = [
        "## Sequence parallelism over devices (weak and strong scaling)",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- devices: {len(devs)} x {', '.join(kinds)} ({devs[0].platform})",
        f"- versions: {_versions()}",
        f"- B, H, d = {cfg.batch}, {cfg.heads}, {cfg.dim}; {cfg.dtype}; forward + backward; "
        f"implementation {cfg.implementation!r}, chunk {cfg.chunk_size}; GLA per-key gates",
        f"- weak: T = {cfg.t_per_device} x P, ratio t(P) / t(1) (1.0 is perfect); strong: "
        f"T = {cfg.strong_t}, ratio t(1) / t(P) (P is perfect)",
        f"- ms: median of {cfg.reps} calls after {cfg.warmup} warm-up calls",
        "- command: `python -m experiments.bench.multigpu`",
        "",
        "| op | scaling | exchange | P | T | ms | ratio |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['op']} | {r['scaling']} | {r['exchange']} | {r['P']} | {r['T']} | "
                     f"{r['ms']:.2f} | {ratio} |")
    if devs[0].platform == "cpu":
        lines += ["", "Virtual CPU devices share this machine's cores: this run checks the "
                  "script, it measures nothing about scaling."]
    return "\n".join(lines) + "\n"


def write_results(path: str, section: str, *, begin: str = BEGIN, end: str = END) -> None:
    """Puts ``section`` between the markers ``begin`` / ``end`` of ``path`` (appended if
    absent)."""
    block = f"{begin}\n{section}{end}\n"
    text = open(path).read() if os.path.exists(path) else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + tail
    else:
        text = text + ("\n" if text and not text.endswith("\n\n") else "") + block
    with open(path, "w") as fh:
        fh.write(text)


def main(argv=None) -> int:
    from experiments.common.cli import nonnegative_int, positive_int

    d = Config()
    pos = positive_int
    p = argparse.ArgumentParser(prog="python -m experiments.bench.multigpu",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", default=list(d.ops), choices=["deltanet", "gla"])
    p.add_argument("--P", nargs="+", type=pos, default=list(d.P))
    p.add_argument("--exchanges", nargs="+", default=list(d.exchanges),
                   choices=["all_gather", "ppermute"])
    p.add_argument("--scalings", nargs="+", default=list(d.scalings), choices=["weak", "strong"])
    p.add_argument("--t-per-device", type=pos, default=d.t_per_device)
    p.add_argument("--strong-t", type=pos, default=d.strong_t)
    p.add_argument("--batch", type=pos, default=d.batch)
    p.add_argument("--heads", type=pos, default=d.heads)
    p.add_argument("--dim", type=pos, default=d.dim)
    p.add_argument("--implementation", default=d.implementation, choices=ops.IMPLEMENTATIONS)
    p.add_argument("--chunk-size", type=pos, default=d.chunk_size)
    p.add_argument("--reps", type=pos, default=d.reps)
    p.add_argument("--warmup", type=nonnegative_int, default=d.warmup)
    p.add_argument("--dtype", default=d.dtype, choices=["bfloat16", "float32"])
    p.add_argument("--cpu-devices", type=pos, default=4,
                   help="virtual devices when running on CPU (read before JAX starts)")
    p.add_argument("--out", default="benchmarks/multigpu.md")
    p.add_argument("--results", default="benchmarks/RESULTS.md",
                   help="also put the table into this file's multigpu section ('' = no)")
    a = p.parse_args(argv)
    if "strong" in a.scalings:
        bad = [P for P in a.P if a.strong_t % P]
        if bad:
            p.error(f"--strong-t {a.strong_t} is not a multiple of --P {bad[0]}")
    cfg = Config(ops=tuple(a.ops), P=tuple(a.P), exchanges=tuple(a.exchanges),
                 scalings=tuple(a.scalings),
                 t_per_device=a.t_per_device, strong_t=a.strong_t, batch=a.batch,
                 heads=a.heads, dim=a.dim, implementation=a.implementation,
                 chunk_size=a.chunk_size, reps=a.reps, warmup=a.warmup, dtype=a.dtype)

    def save(rows):
        with open(a.out, "w") as fh:
            fh.write(markdown(cfg, rows))

    rows = run(cfg, on_row=save)
    save(rows)
    if a.results:
        write_results(a.results, markdown(cfg, rows))
    print(markdown(cfg, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
