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

Compiling, on the host's CPU, is most of the time (about 20 s a point on the GPU machine).
``--workers N`` first compiles the points left to measure in N processes into a persistent JAX
compilation cache (``--cache-dir``), timing nothing; then the timing runs as without workers,
serially and alone on the device, and its compiles load from the cache. XLA autotunes its
GEMMs on the device while compiling, so the workers share the GPU's memory: with 12 workers the
largest points ran it out of memory (2026-12-04); use at most 6 there.

``derive`` turns the measured files into ``lrnn/ops/_auto_table.py``: per backend, the
ranking at every measured point. ``implementation="auto"`` picks, for the op's shapes at trace
time, the best-ranked available implementation of the nearest measured point
(``lrnn.ops._auto``); ``tests/test_auto.py`` checks that the committed table is what ``derive``
makes of the committed measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.bench.kernels import _time  # median of timed calls after warm-up
from experiments.common.cli import nonnegative_float

# op family -> lrnn.numerics op name and the gate kind the models use
FAMILIES = {
    "linear_recurrence": ("linear_recurrence", "head"),
    "gla": ("gated_linear_attention", "key"),
    "delta": ("delta_rule", "none"),
    "delta_product": ("delta_product", "none"),
    "selective": ("selective_scan", "none"),
}
# the selective scan's points give dk = D N (as lrnn.ops.selective_scan asks auto), N = 16
SELECTIVE_N = 16
IMPLS = ("sequential", "scan", "chunked", "pallas")
# the token loop is timed only up to this length on a grid (a GPU's loop at long T is slow to
# time and never the fastest; on a CPU it can be, so it is timed everywhere)
SEQUENTIAL_MAX_T = {"gpu": 512, "cpu": None, "smoke": None}
ROOT = Path(__file__).resolve().parents[2]
# with --workers and --budget-s, the share of the budget the compile workers may use; the rest
# is for timing what they compiled (the timing phase stops at the whole budget, as without
# workers). On the H200 machine, 16 workers compiled ~1.8 s a point and timing from the cache
# took ~2.5 s a point (2026-12-04, linear_recurrence float32): 0.4 balances the two.
PRECOMPILE_SHARE = 0.4
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "lrnn-auto-jax-cache"


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
            "selective": [(1, 4096, 1)],
        }
        extra = [  # the published protocols' own shapes
            dict(family="delta", B=256, T=40, H=4, dk=32, n_h=1),
            dict(family="selective", B=256, T=40, H=1, dk=4096, n_h=1),
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
            "selective": [(1, 1024, 1)],
        }
        extra = [dict(family="delta", B=64, T=40, H=2, dk=16, n_h=1),
                 dict(family="selective", B=64, T=40, H=1, dk=1024, n_h=1),
                 dict(family="linear_recurrence", B=64, T=40, H=1, dk=256, n_h=1)]
    elif name == "smoke":
        Ts, tokens, dtypes = (8, 24), 48, ("float32",)
        widths = {f: [(1, 4, 1)] if f == "linear_recurrence" else [(2, 4, 2 if f ==
                  "delta_product" else 1)] for f in FAMILIES}
        widths["selective"] = [(1, 2 * SELECTIVE_N, 1)]
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


def _inputs(p: dict, batch: int | None = None) -> tuple[str, dict]:
    """The op name and the float64 inputs at point ``p`` (with batch ``batch`` if given)."""
    from lrnn.numerics import random_inputs

    op, gate = FAMILIES[p["family"]]
    dk, dv = p["dk"], p["dk"]
    if p["family"] == "selective":
        dk, dv = p["dk"] // SELECTIVE_N, SELECTIVE_N
    return op, random_inputs(op, batch=p["B"] if batch is None else batch, length=p["T"],
                             heads=p["H"], dk=dk, dv=dv, n_h=p["n_h"], gate=gate)


# "scan" of the delta family materialises a dense [dk, dk] transition per token and sub-step;
# past this many bytes of them (float32) it is not timed: it cannot win there (at B 2048, T 128,
# H 8, dk 32, 8.6 GB of them, it took 164 ms against 13 ms for pallas, gpu_h200_c.json) and its
# compiles run the device out of memory (B 512, T 32, H 16, dk 128: 17 GB)
SCAN_MAX_BYTES = 4 << 30


def _dense_transition_bytes(p: dict) -> int:
    return 4 * p["B"] * p["T"] * p["n_h"] * p["H"] * p["dk"] ** 2


def _skipped_at(p: dict, impls=IMPLS, seq_max: int | None = None) -> dict[str, str]:
    """The implementations of ``impls`` not timed at point ``p``, with the reason: the token
    loop past ``seq_max``, Pallas where this backend does not compile it, the delta family's
    "scan" past ``SCAN_MAX_BYTES`` of dense transitions."""
    from lrnn.ops._common import pallas_available

    op = FAMILIES[p["family"]][0]
    pallas_name = "delta_product" if p["family"].startswith("delta") else op
    out = {}
    for impl in impls:
        if impl == "sequential" and seq_max is not None and p["T"] > seq_max:
            out[impl] = f"token loop not timed past T = {seq_max}"
        elif impl == "pallas" and not pallas_available(pallas_name):
            out[impl] = "no Pallas kernel on this backend"
        elif (impl == "scan" and p["family"].startswith("delta")
              and _dense_transition_bytes(p) > SCAN_MAX_BYTES):
            out[impl] = (f"would materialise {_dense_transition_bytes(p) / 2**30:.1f} GiB of "
                         f"dense transitions (limit {SCAN_MAX_BYTES / 2**30:.0f} GiB)")
    return out


def _impls_at(p: dict, impls=IMPLS, seq_max: int | None = None) -> list[str]:
    """The implementations timed at point ``p`` (the others: ``_skipped_at``)."""
    skipped = _skipped_at(p, impls, seq_max)
    return [impl for impl in impls if impl not in skipped]


# an implementation's timed calls stop after about this many seconds (at least 3 calls): the
# slow forms at the protocols' large shapes (0.1-0.6 s a call) need no 10 repetitions to lose
TIME_PER_IMPL_S = 1.0


def _time_capped(fn, x, reps: int) -> float:
    """Median ms of up to ``reps`` timed calls after 2 warm-up calls, fewer (>= 3) when one
    call is slow (``TIME_PER_IMPL_S``)."""
    import jax

    jax.block_until_ready(fn(x))
    t = time.perf_counter()
    jax.block_until_ready(fn(x))
    once = time.perf_counter() - t
    return _time(fn, x, reps=max(3, min(reps, int(TIME_PER_IMPL_S / max(once, 1e-9)))), warm=0)


def measure_point(p: dict, impls=IMPLS, reps: int = 10, seq_max: int | None = None) -> dict:
    """Times each implementation at point ``p``; returns the record with ``ms`` and ranking."""
    import jax
    import jax.numpy as jnp

    dt = jnp.dtype(p["dtype"])
    op, x = _inputs(p)
    x = {k: jnp.asarray(v, dt) for k, v in x.items()}
    ms, errors = {}, {}
    for impl in _impls_at(p, impls, seq_max):
        try:
            ms[impl] = round(_time_capped(_fwd_bwd(op, impl, x), x, reps), 4)
        except Exception as e:  # noqa: BLE001 - a failing implementation is recorded, not fatal
            errors[impl] = f"{type(e).__name__}: {str(e)[:200]}"
    rec = dict(p, ms=ms, ranking=sorted(ms, key=ms.get), backend=jax.default_backend())
    skipped = _skipped_at(p, impls, seq_max)
    if skipped:
        rec["skipped"] = skipped
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


# ------------------------------------------------------------------------------------------
# compiling ahead, in worker processes
# ------------------------------------------------------------------------------------------
_CACHE_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "requests",
                 "/jax/compilation_cache/cache_hits": "hits"}


def _use_cache(cache_dir) -> None:
    """Sends every compile of this process through the persistent cache at ``cache_dir``."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache every entry,
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # however small
    # the cache decides whether it is used at a process's first compile: decide again
    compilation_cache.reset_cache()


@contextlib.contextmanager
def _persistent_cache(cache_dir):
    """``_use_cache`` for the block, then the previous settings; yields a dict that counts the
    block's compiles that asked the cache ("requests") and that it answered ("hits")."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {n: getattr(jax.config, n) for n in names}
    counts = dict.fromkeys(_CACHE_EVENTS.values(), 0)

    def count(event, **_):
        if event in _CACHE_EVENTS:
            counts[_CACHE_EVENTS[event]] += 1

    _use_cache(cache_dir)
    jax.monitoring.register_event_listener(count)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_listener(count)
        for n, v in before.items():
            jax.config.update(n, v)
        compilation_cache.reset_cache()


def _precompile_worker(workdir: Path) -> None:
    """One compile worker: takes the tasks of ``workdir/tasks.json`` in order, each one no other
    worker has claimed, and compiles it into the cache (no inputs on the device, no timing)."""
    import jax
    import jax.numpy as jnp

    spec = json.loads((workdir / "tasks.json").read_text())
    _use_cache(spec["cache_dir"])
    for i, (p, impl) in enumerate(spec["tasks"]):
        try:  # claim task i (atomic: exactly one worker creates the file)
            os.close(os.open(workdir / "claims" / str(i), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        t = time.perf_counter()
        rec = {}
        try:
            # the shapes and dtypes the timing phase passes, without making the inputs: made at
            # B = 1 and 2, an input whose leading axis follows B is batched (the selective
            # scan's A [D, N] is not)
            op, x1 = _inputs(p, batch=1)
            _, x2 = _inputs(p, batch=2)
            x = {k: jax.ShapeDtypeStruct(
                     ((p["B"],) + v.shape[1:]) if x2[k].shape[0] == 2 * v.shape[0] else v.shape,
                     jnp.dtype(p["dtype"])) for k, v in x1.items()}
            _fwd_bwd(op, impl, x).lower(x).compile()
        except Exception as e:  # noqa: BLE001 - the timing phase meets and records it again
            rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        rec["s"] = time.perf_counter() - t
        tmp = workdir / "done" / f".{i}.tmp"  # whole or absent, should the worker be stopped
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, workdir / "done" / f"{i}.json")


def precompile(points: list[dict], workers: int, cache_dir, impls=IMPLS,
               seq_max: int | None = None, deadline: float | None = None) -> dict:
    """Compiles fwd + bwd of every implementation timed at ``points`` into the persistent cache
    at ``cache_dir``, in ``workers`` processes (``python -m experiments.bench.auto _precompile``);
    stops them at the ``time.time()`` ``deadline``. Returns counts and seconds."""
    from tqdm.auto import tqdm

    tasks = [(p, impl) for p in points for impl in _impls_at(p, impls, seq_max)]
    t0 = time.time()
    res = dict(tasks=len(tasks), compiled=0, failed=0, compile_s=0.0, stopped=False)
    if not tasks:
        return dict(res, wall_s=0.0)
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # N processes share the device
    with tempfile.TemporaryDirectory(prefix="lrnn-auto-precompile-") as d:
        work = Path(d)
        (work / "claims").mkdir()
        (work / "done").mkdir()
        (work / "tasks.json").write_text(json.dumps({"cache_dir": str(cache_dir),
                                                     "tasks": tasks}))
        procs = []
        for w in range(min(workers, len(tasks))):
            with open(work / f"worker{w}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "experiments.bench.auto", "_precompile", d],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        bar = tqdm(total=len(tasks), desc=f"precompile ({len(procs)} workers)")
        try:
            while any(pr.poll() is None for pr in procs):
                if deadline is not None and time.time() > deadline:
                    res["stopped"] = True
                    break
                bar.update(len(list(work.glob("done/*.json"))) - bar.n)
                time.sleep(0.2)
        finally:  # the budget, or an interrupt: no worker may outlive this phase
            for pr in procs:
                if pr.poll() is None:
                    pr.terminate()
            for pr in procs:
                try:
                    pr.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pr.kill()
                    pr.wait()
        bar.update(len(list(work.glob("done/*.json"))) - bar.n)
        bar.close()
        errors: dict[str, int] = {}
        for f in work.glob("done/*.json"):
            rec = json.loads(f.read_text())
            res["failed" if "error" in rec else "compiled"] += 1
            res["compile_s"] += rec["s"]
            if "error" in rec:
                errors[rec["error"]] = errors.get(rec["error"], 0) + 1
        for err, n in sorted(errors.items(), key=lambda e: -e[1])[:3]:  # why compiles failed
            print(f"precompile: {n} x {err}")
        for w, pr in enumerate(procs):
            if pr.returncode and not res["stopped"]:
                tail = (work / f"worker{w}.log").read_text(errors="replace")[-2000:]
                print(f"precompile worker {w} exited with {pr.returncode}:\n{tail}")
    return dict(res, wall_s=time.time() - t0)


def measure(points: list[dict], out: Path, reps: int, budget_s: float, impls=IMPLS,
            seq_max: int | None = None, workers: int = 0, cache_dir=None) -> dict:
    """Measures the ``points`` not yet in ``out``, saving after each one.

    With ``workers`` >= 1, first compiles them in that many processes into the persistent
    compilation cache at ``cache_dir`` (default ``DEFAULT_CACHE_DIR``), for at most
    ``PRECOMPILE_SHARE`` of ``budget_s``; the timing that follows is the same, serial.
    """
    from tqdm.auto import tqdm

    data = json.loads(out.read_text()) if out.exists() else {"meta": _meta(), "points": []}
    done = {_key(r) for r in data["points"]}
    todo = [p for p in points if _key(p) not in done]
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        cache = None
        if workers and todo:
            cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
            cache = stack.enter_context(_persistent_cache(cache_dir))
            pre = precompile(todo, workers, cache_dir, impls, seq_max,
                             t0 + PRECOMPILE_SHARE * budget_s if budget_s else None)
            print(f"precompile: {pre['wall_s']:.0f} s, {pre['compiled']} of {pre['tasks']} "
                  f"compiles ({pre['failed']} failed; {pre['compile_s']:.0f} s of compiling) in "
                  f"{workers} workers, cache {cache_dir}"
                  + (" - stopped by the budget" if pre["stopped"] else ""))
        t1 = time.time()
        n = 0
        for p in tqdm(todo, desc="auto grid"):
            if budget_s and time.time() - t0 > budget_s:
                print(f"budget of {budget_s:.0f} s reached: {len(todo) - todo.index(p)} points "
                      "left (rerun to resume)")
                break
            data["points"].append(measure_point(p, impls, reps, seq_max))
            n += 1
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, indent=1) + "\n")
        print(f"timing: {time.time() - t1:.0f} s for {n} points"
              + (f"; {cache['hits']} of {cache['requests']} compiles loaded from the cache"
                 if cache is not None else ""))
    return data


# ------------------------------------------------------------------------------------------
# the rule
# ------------------------------------------------------------------------------------------
TABLE_PATH = ROOT / "lrnn" / "ops" / "_auto_table.py"


SUPERSEDED = "superseded.txt"  # beside the measured files: "file family dtype [impl]  # why"


def superseded(files) -> set[tuple[str, ...]]:
    """What in the measured files describes code that has changed since: ``(file name, family,
    dtype)`` (the whole point) or ``(file name, family, dtype, implementation)`` (that
    implementation's time only), read from ``superseded.txt`` in the files' directory."""
    out = set()
    for d in {Path(f).parent for f in files}:
        path = d / SUPERSEDED
        if not path.exists():
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = tuple(line.split())
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in IMPLS):
                raise ValueError(f"{path}:{n}: expected 'file family dtype [implementation]' "
                                 f"(implementations: {', '.join(IMPLS)}), got {line!r}")
            out.add(parts)
    return out


def current_points(files) -> list[tuple[str, dict]]:
    """``(file name, record)`` of every point the rule uses: measured, not superseded (a
    superseded implementation's time taken out of its record), and not measured again in a
    later file."""
    gone = superseded(files)
    latest: dict[tuple[str, str], tuple[str, dict]] = {}
    for f in files:
        data = json.loads(Path(f).read_text())
        name = Path(f).name
        for r in data["points"]:
            where = (name, r["family"], r["dtype"])
            if where in gone:
                continue
            ms = {k: v for k, v in r["ms"].items() if where + (k,) not in gone}
            if ms:
                r = dict(r, ms=ms, ranking=[k for k in r["ranking"] if k in ms])
                latest[(data["meta"]["backend"], _key(r))] = (name, r)
    return list(latest.values())


def derive(files) -> dict:
    """``{backend: {"source": [...], "points": [...]}}`` from measured files (one backend each;
    the points of :func:`current_points`)."""
    table: dict[str, dict] = {}
    backend_of = {}
    for f in files:
        meta = json.loads(Path(f).read_text())["meta"]
        backend_of[Path(f).name] = meta["backend"]
        entry = table.setdefault(meta["backend"], {"source": [], "points": []})
        entry["source"].append(f"{Path(f).name}: {meta['device']}, jax {meta['jax']}, "
                               f"{meta['date']}")
    for name, r in current_points(files):
        keep = {k: r[k] for k in ("family", "dtype", "B", "T", "H", "dk", "n_h")}
        table[backend_of[name]]["points"].append(dict(keep, ranking=list(r["ranking"])))
    return {b: {"source": e["source"], "points": e["points"]} for b, e in sorted(table.items())}


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
        for f in a.files:
            try:
                json.loads(Path(f).read_text())
            except OSError as e:
                p.error(f"{f}: {e.strerror or e}")
            except ValueError as e:
                p.error(f"{f} is not JSON ({e})")
        Path(a.out).write_text(render_table(derive(sorted(a.files))))
        print(f"wrote {a.out}")
        return 0
    if argv and argv[0] == "_precompile":  # a worker of ``precompile``
        _precompile_worker(Path(argv[1]))
        return 0
    p = argparse.ArgumentParser(prog="python -m experiments.bench.auto",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="gpu", choices=("gpu", "cpu", "smoke"))
    p.add_argument("--out", required=True, help="JSON file (appended to; resumable)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--budget-s", type=nonnegative_float, default=0.0,
                   help="stop after this many seconds (0: no limit)")
    p.add_argument("--dtypes", default="", help="comma-separated subset of the grid's dtypes")
    p.add_argument("--families", default="", help="comma-separated subset of " +
                   ", ".join(FAMILIES))
    p.add_argument("--workers", type=int, default=0,
                   help="compile first in this many processes (0: compile as each point is "
                   "timed); the timing stays serial")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                   help="persistent compilation cache of --workers (kept: a rerun reuses it)")
    a = p.parse_args(argv)
    if a.reps < 1:
        p.error("--reps must be >= 1")
    if a.workers < 0:
        p.error("--workers must be >= 0")
    keep_dt = set(filter(None, a.dtypes.split(",")))
    keep_f = set(filter(None, a.families.split(",")))
    bad = keep_f - set(FAMILIES)
    if bad:
        p.error(f"unknown --families {sorted(bad)}; valid: {', '.join(FAMILIES)}")
    grid_dtypes = sorted({q["dtype"] for q in _grid(a.grid)})
    bad = keep_dt - set(grid_dtypes)
    if bad:
        p.error(f"unknown --dtypes {sorted(bad)}; the {a.grid} grid has {', '.join(grid_dtypes)}")
    points = [q for q in _grid(a.grid) if (not keep_dt or q["dtype"] in keep_dt)
              and (not keep_f or q["family"] in keep_f)]
    data = measure(points, Path(a.out), a.reps, a.budget_s, seq_max=SEQUENTIAL_MAX_T[a.grid],
                   workers=a.workers, cache_dir=a.cache_dir)
    n = len(data["points"])
    print(f"{n} points in {a.out}")
    for r in data["points"][-min(n, 60):]:
        ms = " ".join(f"{k}={v:.3f}" for k, v in r["ms"].items())
        print(f"{_key(r):45s} best={r['ranking'][0] if r['ranking'] else '-':10s} {ms}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    raise SystemExit(main())
