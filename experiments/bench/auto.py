"""Which implementation is fastest where: the measurements behind ``implementation="auto"``.

    python -m experiments.bench.auto --out benchmarks/auto/gpu_h200.json       # on the GPU
    python -m experiments.bench.auto --grid cpu --out benchmarks/auto/cpu.json  # on a CPU
    python -m experiments.bench.auto derive benchmarks/auto/*.json              # the rule

For every point of a grid of (op, dtype, B, T, widths) it times forward + backward (the
gradient of ``<o, c> + <S, c'>`` with respect to every input, jitted; median of timed calls
after warm-up) of each implementation that runs there (on the GPU grid "sequential" only up to
T = 512) and
records the ranking. Results are appended point by point to ``--out`` (a JSON file with the
date, device and versions), so a run cut short by a time limit resumes where it stopped
(``--budget-s`` ends it cleanly first).

``derive`` turns the measured files into ``lrnn/ops/_auto_table.py``: per backend, the
ranking at every measured point. ``implementation="auto"`` picks, for the op's shapes at trace
time, the best-ranked available implementation of the nearest measured point
(``lrnn.ops._auto``); ``tests/test_auto.py`` checks that the committed table is what ``derive``
makes of the committed measurements.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from experiments.bench.kernels import _time  # median of timed calls after warm-up

# op family -> lrnn.numerics op name and the gate kind the models use
FAMILIES = {
    "linear_recurrence": ("linear_recurrence", "head"),
    "gla": ("gated_linear_attention", "key"),
    "delta": ("delta_rule", "none"),
    "delta_product": ("delta_product", "none"),
}
IMPLS = ("sequential", "scan", "chunked", "pallas")
# the token loop is timed only up to this length on a grid (a GPU's loop at long T is slow to
# time and never the fastest; on a CPU it can be, so it is timed everywhere)
SEQUENTIAL_MAX_T = {"gpu": 512, "cpu": None, "smoke": None}


def _grid(name: str) -> list[dict]:
    """Grid points: dict(family, B, T, H, dk, n_h, dtype)."""
    pts = []
    if name == "gpu":
        Ts = (32, 128, 512, 2048, 8192)
        tokens = 16384
        dtypes = ("float32", "bfloat16")
        widths = {
            "linear_recurrence": [(1, 256, 1), (1, 4096, 1)],
            "delta": [(4, 32, 1), (8, 32, 1), (16, 128, 1)],
            "delta_product": [(8, 32, 2)],
            "gla": [(4, 32, 1), (16, 128, 1)],
        }
        extra = [  # the published protocols' own shapes
            dict(family="delta", B=256, T=40, H=4, dk=32, n_h=1),
            dict(family="linear_recurrence", B=256, T=40, H=1, dk=4096, n_h=1),
            dict(family="gla", B=256, T=40, H=4, dk=32, n_h=1),
            dict(family="delta", B=2048, T=128, H=8, dk=32, n_h=1),
            dict(family="delta_product", B=2048, T=128, H=8, dk=32, n_h=2),
            dict(family="delta_product", B=2048, T=128, H=8, dk=32, n_h=4),
        ]
    elif name == "cpu":
        Ts = (32, 128, 512, 2048)
        tokens = 2048
        dtypes = ("float32",)
        widths = {
            "linear_recurrence": [(1, 64, 1), (1, 512, 1)],
            "delta": [(2, 16, 1), (4, 32, 1)],
            "delta_product": [(2, 16, 2)],
            "gla": [(2, 16, 1), (4, 32, 1)],
        }
        extra = [dict(family="delta", B=64, T=40, H=2, dk=16, n_h=1),
                 dict(family="linear_recurrence", B=64, T=40, H=1, dk=256, n_h=1)]
    elif name == "smoke":
        Ts, tokens, dtypes = (8, 24), 48, ("float32",)
        widths = {f: [(1, 4, 1)] if f == "linear_recurrence" else [(2, 4, 2 if f ==
                  "delta_product" else 1)] for f in FAMILIES}
        extra = []
    else:
        raise ValueError(f"unknown grid {name!r}; valid: gpu, cpu, smoke")
    for fam, ws in widths.items():
        for H, dk, n_h in ws:
            for T in Ts:
                pts.append(dict(family=fam, B=max(1, tokens // T), T=T, H=H, dk=dk, n_h=n_h))
    # the protocols' own shapes first (a run cut short by its time budget has them)
    return ([dict(p, dtype=dt) for dt in dtypes for p in extra]
            + [dict(p, dtype=dt) for dt in dtypes for p in pts])


def _key(p: dict) -> str:
    return "{family}:{dtype}:B{B}:T{T}:H{H}:dk{dk}:nh{n_h}".format(**p)


def _fwd_bwd(op: str, impl: str, x: dict):
    import jax
    import jax.numpy as jnp

    from lrnn.numerics import run_op

    def loss(x):
        o, S = run_op(op, x, impl)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(S.astype(jnp.float32))

    return jax.jit(jax.grad(loss))


def measure_point(p: dict, impls=IMPLS, reps: int = 10, seq_max: int | None = None) -> dict:
    """Times each implementation at point ``p``; returns the record with ``ms`` and ranking."""
    import jax
    import jax.numpy as jnp

    from lrnn.numerics import random_inputs
    from lrnn.ops._common import pallas_available

    op, gate = FAMILIES[p["family"]]
    kw = dict(batch=p["B"], length=p["T"], heads=p["H"], dk=p["dk"], dv=p["dk"],
              n_h=p["n_h"], gate=gate)
    dt = jnp.dtype(p["dtype"])
    x = {k: jnp.asarray(v, dt) for k, v in random_inputs(op, **kw).items()}
    pallas_name = "delta_product" if p["family"].startswith("delta") else op
    ms, errors = {}, {}
    for impl in impls:
        if impl == "sequential" and seq_max is not None and p["T"] > seq_max:
            continue
        if impl == "pallas" and not pallas_available(pallas_name):
            continue
        try:
            ms[impl] = round(_time(_fwd_bwd(op, impl, x), x, reps=reps, warm=2), 4)
        except Exception as e:  # noqa: BLE001 - a failing implementation is recorded, not fatal
            errors[impl] = f"{type(e).__name__}: {str(e)[:200]}"
    rec = dict(p, ms=ms, ranking=sorted(ms, key=ms.get), backend=jax.default_backend())
    if errors:
        rec["errors"] = errors
    return rec


def _meta() -> dict:
    import jax

    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "command": "python -m experiments.bench.auto " + " ".join(sys.argv[1:]),
        "metric": "fwd+bwd ms, median",
    }


def measure(points: list[dict], out: Path, reps: int, budget_s: float, impls=IMPLS,
            seq_max: int | None = None) -> dict:
    """Measures the ``points`` not yet in ``out``, saving after each one."""
    from tqdm.auto import tqdm

    data = json.loads(out.read_text()) if out.exists() else {"meta": _meta(), "points": []}
    done = {_key(r) for r in data["points"]}
    todo = [p for p in points if _key(p) not in done]
    t0 = time.time()
    for p in tqdm(todo, desc="auto grid"):
        if budget_s and time.time() - t0 > budget_s:
            print(f"budget of {budget_s:.0f} s reached: {len(todo) - todo.index(p)} points "
                  "left (rerun to resume)")
            break
        data["points"].append(measure_point(p, impls, reps, seq_max))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")
    return data


# ------------------------------------------------------------------------------------------
# the rule
# ------------------------------------------------------------------------------------------
TABLE_PATH = Path(__file__).resolve().parents[2] / "lrnn" / "ops" / "_auto_table.py"


def derive(files) -> dict:
    """``{backend: {"source": [...], "points": [...]}}`` from measured files (one backend each;
    a later file's point replaces an earlier one at the same grid point)."""
    table: dict[str, dict] = {}
    for f in files:
        data = json.loads(Path(f).read_text())
        meta = data["meta"]
        entry = table.setdefault(meta["backend"], {"source": [], "points": {}})
        entry["source"].append(f"{Path(f).name}: {meta['device']}, jax {meta['jax']}, "
                               f"{meta['date']}")
        for r in data["points"]:
            if r["ranking"]:
                keep = {k: r[k] for k in ("family", "dtype", "B", "T", "H", "dk", "n_h")}
                entry["points"][_key(r)] = dict(keep, ranking=list(r["ranking"]))
    return {b: {"source": e["source"], "points": list(e["points"].values())}
            for b, e in sorted(table.items())}


def render_table(table: dict) -> str:
    lines = [
        "# ruff: noqa: E501",
        '"""Measured rankings behind ``implementation="auto"`` (generated: do not edit).',
        "",
        "Made by ``python -m experiments.bench.auto derive`` from the measurements in",
        "``benchmarks/auto/``; ``lrnn.ops._auto`` reads it. Per backend: where each point was",
        "measured, and at each point the implementations from fastest to slowest (fwd + bwd).",
        '"""',
        "",
        "TABLE = {",
    ]
    for backend, e in table.items():
        lines.append(f"    {backend!r}: {{")
        lines.append("        'source': [")
        lines += [f"            {s!r}," for s in e["source"]]
        lines.append("        ],")
        lines.append("        'points': [")
        for p in e["points"]:
            lines.append(f"            {p!r},")
        lines.append("        ],")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "derive":
        p = argparse.ArgumentParser(prog="python -m experiments.bench.auto derive")
        p.add_argument("files", nargs="+", help="measured JSON files (benchmarks/auto/*.json)")
        p.add_argument("--out", default=str(TABLE_PATH), help="the generated table module")
        a = p.parse_args(argv[1:])
        Path(a.out).write_text(render_table(derive(sorted(a.files))))
        print(f"wrote {a.out}")
        return 0
    p = argparse.ArgumentParser(prog="python -m experiments.bench.auto",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="gpu", choices=("gpu", "cpu", "smoke"))
    p.add_argument("--out", required=True, help="JSON file (appended to; resumable)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=0.0, help="stop after this many seconds")
    p.add_argument("--dtypes", default="", help="comma-separated subset of the grid's dtypes")
    p.add_argument("--families", default="", help="comma-separated subset of " +
                   ", ".join(FAMILIES))
    a = p.parse_args(argv)
    if a.reps < 1:
        p.error("--reps must be >= 1")
    keep_dt = set(filter(None, a.dtypes.split(",")))
    keep_f = set(filter(None, a.families.split(",")))
    bad = keep_f - set(FAMILIES)
    if bad:
        p.error(f"unknown --families {sorted(bad)}; valid: {', '.join(FAMILIES)}")
    points = [q for q in _grid(a.grid) if (not keep_dt or q["dtype"] in keep_dt)
              and (not keep_f or q["family"] in keep_f)]
    data = measure(points, Path(a.out), a.reps, a.budget_s, seq_max=SEQUENTIAL_MAX_T[a.grid])
    n = len(data["points"])
    print(f"{n} points in {a.out}")
    for r in data["points"][-min(n, 60):]:
        ms = " ".join(f"{k}={v:.3f}" for k, v in r["ms"].items())
        print(f"{_key(r):45s} best={r['ranking'][0] if r['ranking'] else '-':10s} {ms}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    raise SystemExit(main())
