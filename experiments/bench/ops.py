"""Times the implementations of each op side by side (forward, and forward + backward).

    python -m experiments.bench.ops                       # CPU, T = 4096, small heads
    python -m experiments.bench.ops --T 1024 --chunk-sizes 16 32

Writes a markdown table (date, device, jax version, load, shapes, ms, ratio to the
sequential implementation) to ``--out`` (default ``benchmarks/ops_cpu.md``). Each entry is
the minimum over ``--repeats`` timed calls of a jitted function after one warm-up call.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lrnn.numerics import random_inputs, run_op


@dataclasses.dataclass(frozen=True)
class Config:
    T: int = 4096  # sequence length
    batch: int = 1  # B
    heads: int = 4  # H
    dk: int = 32  # key dim (also D of linear_recurrence)
    dv: int = 32  # value dim
    n_h: int = 2  # Householder steps per token (delta_product)
    chunk_sizes: tuple[int, ...] = (16, 32, 64)  # chunk sizes of the chunked form
    implementations: tuple[str, ...] = ("sequential", "scan", "chunked")  # to time
    ops: tuple[str, ...] = (  # op[:gate kind]
        "linear_recurrence",
        "gated_linear_attention:head",
        "gated_linear_attention:key",
        "delta_rule:none",
        "delta_rule:head",
        "delta_product:head",
    )
    backward: bool = True  # also time forward + backward (gradients of all inputs)
    repeats: int = 5  # timed calls per entry (the minimum is reported)
    out: str = "benchmarks/ops_cpu.md"  # markdown output


def _time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _variants(cfg):
    for impl in cfg.implementations:
        if impl == "chunked":
            for C in cfg.chunk_sizes:
                yield f"chunked C={C}", impl, C
        else:
            yield impl, impl, 64


def run(cfg: Config, on_row=None) -> list[dict]:
    jobs = [(spec, v) for spec in cfg.ops for v in _variants(cfg)]
    rows = []
    for spec, (label, impl, C) in tqdm(jobs, desc="bench ops"):
        op, _, gate = spec.partition(":")
        kw = dict(batch=cfg.batch, length=cfg.T, heads=cfg.heads, dk=cfg.dk, dv=cfg.dv,
                  n_h=cfg.n_h, gate=gate or "head")
        x = {k: jnp.asarray(v, jnp.float32) for k, v in random_inputs(op, **kw).items()}
        fwd = jax.jit(functools.partial(run_op, op, implementation=impl, chunk_size=C))
        row = {"op": spec, "implementation": label, "fwd_ms": _time(fwd, x, repeats=cfg.repeats)}
        if cfg.backward:
            def loss(x, op=op, impl=impl, C=C):
                o, S = run_op(op, x, impl, chunk_size=C)
                return jnp.sum(o) + jnp.sum(S)

            grad = jax.jit(jax.grad(loss))
            row["fwd_bwd_ms"] = _time(grad, x, repeats=cfg.repeats)
        rows.append(row)
        if on_row is not None:
            on_row(_with_ratios(cfg, [dict(r) for r in rows]))
    return _with_ratios(cfg, rows)


def _with_ratios(cfg: Config, rows: list[dict]) -> list[dict]:
    for r in rows:
        seq = next((s for s in rows if s["op"] == r["op"]
                    and s["implementation"] == "sequential"), None)
        nan = float("nan")
        r["fwd_ratio"] = r["fwd_ms"] / seq["fwd_ms"] if seq else nan
        if cfg.backward:
            r["fwd_bwd_ratio"] = r["fwd_bwd_ms"] / seq["fwd_bwd_ms"] if seq else nan
    return rows


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def _usable_cores() -> int:
    """Cores this process may run on (``taskset`` / cgroup affinity), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _command() -> str:
    import sys

    args = " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("ops.py") else ""
    return f"python -m experiments.bench.ops {args}".strip()


def markdown(cfg: Config, rows: list[dict]) -> str:
    dev = jax.devices()[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# lrnn.ops: implementations side by side",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {jax.default_backend()} ({dev.device_kind}; {_cpu_model()}, "
        f"{_usable_cores()} usable cores of {os.cpu_count()}, load average {load:.1f} when the "
        "run ended)",
        f"- jax {jax.__version__}, numpy {np.__version__}",
        f"- shapes: B={cfg.batch}, T={cfg.T}, H={cfg.heads}, dk={cfg.dk}, dv={cfg.dv}, "
        f"n_h={cfg.n_h} (delta_product), D={cfg.dk} (linear_recurrence); float32",
        f"- ms: minimum of {cfg.repeats} calls of the jitted function after a warm-up; "
        "ratio: time / time of `sequential` for the same op (< 1 is faster)",
        f"- command: `{_command()}`",
        "",
    ]
    head = "| op | implementation | fwd ms | fwd ratio |"
    sep = "|---|---|---:|---:|"
    if cfg.backward:
        head += " fwd+bwd ms | fwd+bwd ratio |"
        sep += "---:|---:|"
    lines += [head, sep]
    for r in rows:
        line = (f"| {r['op']} | {r['implementation']} | {r['fwd_ms']:.2f} | "
                f"{r['fwd_ratio']:.2f} |")
        if cfg.backward:
            line += f" {r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_ratio']:.2f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def check(cfg: Config) -> Config:
    """``cfg`` if every size is positive and every name known; UsageError naming the flag."""
    from experiments.common.cli import UsageError
    from lrnn.numerics import GATES, OPS
    from lrnn.ops import IMPLEMENTATIONS

    for name in ("T", "batch", "heads", "dk", "dv", "n_h", "repeats"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    bad = [C for C in cfg.chunk_sizes if C < 1]
    if bad or ("chunked" in cfg.implementations and not cfg.chunk_sizes):
        raise UsageError(f"--chunk-sizes must be positive integers, got {list(cfg.chunk_sizes)}")
    bad = [i for i in cfg.implementations if i not in IMPLEMENTATIONS]
    if bad or not cfg.implementations:
        raise UsageError(f"--implementations: {bad or 'none'}; valid: {', '.join(IMPLEMENTATIONS)}")
    if not cfg.ops:
        raise UsageError("--ops: none given")
    for spec in cfg.ops:
        op, _, gate = spec.partition(":")
        if op not in OPS:
            raise UsageError(f"--ops {spec!r}: unknown op {op!r}; valid: {', '.join(OPS)}")
        kinds = GATES.get(op, ())
        if (gate or kinds) and gate not in kinds:
            raise UsageError(f"--ops {spec!r}: {op} takes " + (
                f"a gate kind :{' or :'.join(kinds)}" if kinds else "no gate kind"))
    return cfg


def main(cfg: Config) -> list[dict]:
    os.makedirs(os.path.dirname(cfg.out) or ".", exist_ok=True)

    def write(rows):  # after every row, so an interrupted run keeps what it measured
        with open(cfg.out, "w") as fh:
            fh.write(markdown(cfg, rows))

    rows = run(cfg, on_row=write)
    write(rows)
    text = markdown(cfg, rows)
    print(text)
    print(f"wrote {cfg.out}")
    return rows


def cli(argv: list[str] | None = None) -> list[dict]:
    """``python -m experiments.bench.ops [flags]``: a bad flag is one ``error:`` line."""
    import sys

    from experiments.common.cli import UsageError, fail, tyro_cli

    prog = "python -m experiments.bench.ops"
    try:
        cfg = check(tyro_cli(Config, args=sys.argv[1:] if argv is None else argv, prog=prog,
                             description=__doc__.split("\n\n")[0]))
    except UsageError as e:
        fail(prog, e)
    return main(cfg)


if __name__ == "__main__":
    cli()  # tyro only at the entry point
