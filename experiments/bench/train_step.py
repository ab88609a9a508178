"""Time and dissect the training step of a preset (the state-tracking models are tiny, so what
is not arithmetic shows).

    python -m experiments.bench.train_step --task parity --models deltanet diagonal \\
        --implementations auto chunked scan pallas --preset paper --out benchmarks/train_step/x.json

For each (model, implementation) it reports, in ms per step:
- ``step``: the jitted train step (sampling, forward, backward, AdamW) back to back, synchronised
  once at the end (device time plus dispatch);
- ``step_sync``: the same, synchronised after every step (adds the host round trip);
- ``fwd`` / ``fwd_bwd``: the model alone on one fixed batch (no sampling, no optimiser);
- ``loop``: ``experiments.train.train`` itself over ``--loop-steps`` steps (tqdm, metrics
  logging with its device-to-host syncs), from the ``seconds`` of metrics.jsonl;
- ``dispatch``: a jitted identity over the same donated train state (the host cost of a call);
- ``kernels``: instructions of the compiled step's entry computation that launch work
  (fusions, custom calls, loops, copies), a proxy for kernel launches;
- ``profile`` (with ``--profile N``): N steps under ``jax.profiler``: device kernels launched
  per step, their summed device time per step (``busy_ms``) against the span from the first
  kernel's start to the last one's end (``span_ms``; the difference is idle gaps), and the ops
  that take the most device time (by HLO op where the trace names it);
and with ``--seeds N`` the same for an ensemble of N seeds trained as one vmapped model.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _median_ms(fn, n: int, warm: int = 3) -> float:
    import jax

    for _ in range(warm):
        jax.block_until_ready(fn())
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


_LAUNCH = re.compile(r"=\s*\S+\s+(fusion|custom-call|while|conditional|copy|all-reduce|"
                     r"all-gather|dot|convolution|sort|scatter|gather|reduce)\(")


def count_kernels(hlo_text: str) -> dict:
    """Work-launching instructions in the ENTRY computation of an optimised HLO module."""
    entry, inside = [], False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY"):
            inside = True
            continue
        if inside:
            if line.startswith("}"):
                break
            entry.append(line)
    kinds: dict[str, int] = {}
    for line in entry:
        m = _LAUNCH.search(line)
        if m:
            kinds[m.group(1)] = kinds.get(m.group(1), 0) + 1
    return {"total": sum(kinds.values()), **kinds}


def profile_steps(fn, n: int, top: int = 25) -> dict:
    """Run ``fn`` (one step) ``n`` times under ``jax.profiler`` and summarise the device plane."""
    import glob

    import jax
    from jax.profiler import ProfileData

    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        for _ in range(n):
            out = fn()
        jax.block_until_ready(out)
        jax.profiler.stop_trace()
        files = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        if not files:
            return {"error": "no trace written"}
        data = ProfileData.from_file(files[0])
    by_op: dict[str, list] = {}
    starts, ends, count = [], [], 0
    lines_seen = {}
    for plane in data.planes:
        if not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            events = list(line.events)
            lines_seen[f"{plane.name}/{line.name}"] = len(events)
            if not line.name.lower().startswith("stream"):
                continue
            for e in events:
                stats = dict(e.stats)
                key = str(stats.get("hlo_op") or e.name)[:80]
                rec = by_op.setdefault(key, [0, 0.0])
                rec[0] += 1
                rec[1] += e.duration_ns
                starts.append(e.start_ns)
                ends.append(e.start_ns + e.duration_ns)
                count += 1
    if not count:
        return {"error": "no device kernels in the trace", "lines": lines_seen}
    busy = sum(v[1] for v in by_op.values())
    ops = sorted(by_op.items(), key=lambda kv: -kv[1][1])[:top]
    return {"steps": n, "kernels_per_step": round(count / n, 1),
            "busy_ms": round(busy / n / 1e6, 4),
            "span_ms": round((max(ends) - min(starts)) / n / 1e6, 4),
            "top": [{"op": k, "calls_per_step": round(v[0] / n, 1),
                     "ms_per_step": round(v[1] / n / 1e6, 4),
                     "share": round(v[1] / busy, 3)} for k, v in ops],
            "lines": lines_seen}


def bench_one(task_name: str, model: str, impl: str, preset: str, steps: int, loop_steps: int,
              seeds: int = 1, overrides: dict | None = None, dump_hlo: str = "",
              parts: bool = True, profile: int = 0) -> dict:
    import jax

    from experiments import train as tr
    from experiments.configs import Config, apply_preset

    cfg = apply_preset(Config(task=task_name, model=model), preset)
    cfg = dataclasses.replace(cfg, implementation=impl, **(overrides or {}))
    task = tr.make_task(cfg)
    rec = {"task": task_name, "model": model, "implementation": impl, "preset": preset,
           "bf16": cfg.bf16, "batch": cfg.batch, "train_sizes": list(task.train_sizes),
           "seeds": seeds, "overrides": overrides or {}}
    if seeds > 1:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(seeds)), out="/tmp/unused")
    setup = tr.Setup(cfg, task)
    state, step_fn, args = setup.initial(), setup.step_fn, setup.step_args()
    rest = setup.rest
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, *args).compile()
    rec["compile_s"] = round(time.perf_counter() - t0, 2)
    text = compiled.as_text()
    rec["kernels"] = count_kernels(text)
    if dump_hlo:
        import gzip

        Path(dump_hlo).mkdir(parents=True, exist_ok=True)
        name = f"{task_name}-{model}-{impl}-s{seeds}.hlo.txt.gz"
        with gzip.open(Path(dump_hlo) / name, "wt") as f:
            f.write(text)

    box = {"s": state}

    def one():
        box["s"], m = compiled(box["s"], *args)
        return m["loss"]

    rec["step_sync"] = round(_median_ms(one, steps), 4)
    for _ in range(3):
        one()
    jax.block_until_ready(box["s"])
    t0 = time.perf_counter()
    for _ in range(steps):
        box["s"], m = compiled(box["s"], *args)
    jax.block_until_ready(box["s"])
    rec["step"] = round((time.perf_counter() - t0) / steps * 1e3, 4)
    if profile:
        rec["profile"] = profile_steps(one, profile)

    ident = jax.jit(lambda s: s, donate_argnums=0)
    box["s"] = ident(box["s"])

    def disp():
        box["s"] = ident(box["s"])
        return box["s"]["step"]

    rec["dispatch"] = round(_median_ms(disp, steps), 4)

    if seeds == 1 and parts:
        from flax import nnx

        inputs, labels, mask = jax.jit(task.train_batch, static_argnums=1)(
            jax.random.key(0), cfg.batch)
        params = setup.layout.unpack(box["s"]["params"])

        def loss(p):
            logits = nnx.merge(setup.graphdef, p, rest)(inputs)
            return tr.masked_cross_entropy(logits, labels, mask)

        fwd = jax.jit(loss)
        fb = jax.jit(jax.grad(loss))
        rec["fwd"] = round(_median_ms(lambda: fwd(params), steps), 4)
        rec["fwd_bwd"] = round(_median_ms(lambda: fb(params), steps), 4)

    if loop_steps and seeds == 1:
        with tempfile.TemporaryDirectory() as d:
            lcfg = dataclasses.replace(cfg, out=d, steps=loop_steps, log_every=loop_steps // 4,
                                       ckpt_every=10**9, keep_checkpoints=1, progress=True)
            tr.train(lcfg)
            lines = [json.loads(s) for s in (Path(d) / "metrics.jsonl").read_text().splitlines()]
            a, b = lines[0], lines[-1]
            rec["loop"] = round((b["seconds"] - a["seconds"]) / (b["step"] - a["step"]) * 1e3, 4)
    return rec


def _meta() -> dict:
    import jax

    dev = jax.devices()[0]
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
            "jax": jax.__version__, "python": platform.python_version(),
            "command": "python -m experiments.bench.train_step " + " ".join(sys.argv[1:]),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}  # e.g. command buffers turned off


def check_configs(task: str, models, implementations, preset: str, overrides: dict) -> None:
    """ValueError naming the flag unless every (model, implementation) config is valid (before
    anything is timed: a bad name is one error, not a row of errors)."""
    from experiments.configs import Config, apply_preset
    from experiments.models import model_names
    from experiments.tasks import get_task
    from experiments.train import check_config
    from lrnn.ops import IMPLEMENTATIONS

    get_task(task)
    bad = [i for i in implementations if i not in IMPLEMENTATIONS]
    if bad:
        raise ValueError(f"--implementations {bad[0]!r}: valid: {', '.join(IMPLEMENTATIONS)}")
    fields = {f.name for f in dataclasses.fields(Config)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"--set: unknown Config fields {bad}")
    for model in models:
        if model not in model_names():
            raise ValueError(f"--models {model!r}: valid models: {', '.join(model_names())}")
        for impl in implementations:
            cfg = apply_preset(Config(task=task, model=model), preset)
            try:
                cfg = dataclasses.replace(cfg, implementation=impl, **overrides)
            except TypeError as e:
                raise ValueError(f"--set: {e}") from None
            check_config(cfg)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench.train_step",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="parity")
    p.add_argument("--models", nargs="+", default=["deltanet", "diagonal"])
    p.add_argument("--implementations", nargs="+", default=["auto", "chunked", "scan"])
    p.add_argument("--preset", default="paper")
    p.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    p.add_argument("--loop-steps", type=int, default=200,
                   help="steps of the real training loop to time (0: skip)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1],
                   help="ensemble sizes to time (1 = a single run)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="config overrides, e.g. clip=0 bf16=true")
    p.add_argument("--out", default="", help="JSON file to write")
    p.add_argument("--dump-hlo", default="", help="directory for the compiled steps' HLO text")
    p.add_argument("--no-parts", action="store_true", help="skip the model-only fwd / fwd_bwd")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="trace N steps with jax.profiler and report the device time by op")
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be >= 1")
    if a.profile < 0:
        p.error("--profile must be >= 0")
    if a.loop_steps < 0:
        p.error("--loop-steps must be >= 0")
    if min(a.seeds) < 1:
        p.error(f"--seeds: ensemble sizes must be >= 1, got {a.seeds}")
    overrides = {}
    for item in a.set:
        k, _, v = item.partition("=")
        try:
            overrides[k] = json.loads(v) if v not in ("", None) else v
        except ValueError:
            overrides[k] = v  # a plain string (e.g. implementation=chunked)
    try:
        check_configs(a.task, a.models, a.implementations, a.preset, overrides)
    except ValueError as e:
        p.error(str(e))
    rows = []
    for model in a.models:
        for impl in a.implementations:
            for n in a.seeds:
                try:
                    r = bench_one(a.task, model, impl, a.preset, a.steps,
                                  a.loop_steps if n == 1 else 0, n, overrides, a.dump_hlo,
                                  not a.no_parts, a.profile)
                except Exception as e:  # noqa: BLE001 - record and go on
                    r = {"model": model, "implementation": impl, "seeds": n,
                         "error": f"{type(e).__name__}: {str(e)[:300]}"}
                rows.append(r)
                print(json.dumps(r), flush=True)
                if a.out:  # after every row: a run cut short keeps what it measured
                    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.out).write_text(json.dumps({"meta": _meta(), "rows": rows},
                                                      indent=1) + "\n")
    print("| model | impl | seeds | step ms | sync | fwd | fwd+bwd | loop | dispatch | kernels |")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['implementation']} | {r['seeds']} | {r['error']} |")
            continue
        print("| {model} | {implementation} | {seeds} | {step} | {step_sync} | {f} | {fb} | "
              "{lp} | {dispatch} | {k} |".format(**r, f=r.get("fwd", "-"),
                                                 fb=r.get("fwd_bwd", "-"),
                                                 lp=r.get("loop", "-"),
                                                 k=r["kernels"]["total"]))
    for r in rows:
        prof = r.get("profile") or {}
        if "top" in prof:
            print(f"\n{r['model']} {r['implementation']} seeds={r['seeds']}: "
                  f"{prof['kernels_per_step']} kernels/step, busy {prof['busy_ms']} ms, "
                  f"span {prof['span_ms']} ms")
            for o in prof["top"][:15]:
                print(f"  {o['ms_per_step']:8.4f} ms {o['share']:6.1%} x{o['calls_per_step']:<6} "
                      f"{o['op']}")
        elif prof:
            print(r["model"], r["implementation"], "profile:", prof)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
