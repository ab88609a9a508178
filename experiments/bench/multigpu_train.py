"""The same training run on one device and on (data, seq) meshes: do the loss curves agree?

On a machine with several GPUs (the device tool's ``nvidia-h200-x4``)::

    JAX_PLATFORMS=cuda python -m experiments.bench.multigpu_train \\
        --meshes "" data=2,seq=2 data=1,seq=4 --length 16384 --steps 200

trains the same model on the same data (``--task``, ``--model`` with the ``paper`` preset's
architecture, every training and test example of length ``--length``) once per mesh spec
(``""`` = one device, no mesh; see ``python -m experiments.train --mesh``), each with the same
seed, in this process, one after another. It writes, under ``--out``:

* one run directory per mesh (``config.json``, ``metrics.jsonl``, ``eval.json``; the
  checkpoints are deleted once the run has finished);
* ``curves.png``: the loss curves (top) and each sharded run's loss minus the single-device
  run's (bottom);
* ``table.md``: per mesh, the time per step (logged intervals after the first, which holds the
  compilation), the largest |loss difference| to the first mesh over all logged steps, the
  last logged loss and accuracy, and the evaluation accuracy at ``--length``;

and puts ``table.md`` between ``<!-- multigpu-train begin -->`` / ``<!-- multigpu-train end
-->`` of ``--results`` (``benchmarks/RESULTS.md``). On CPU, ``--cpu-devices`` virtual devices
check the script end to end at small sizes; their times say nothing about scaling.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import sys

if __name__ == "__main__":  # virtual CPU devices must be requested before JAX starts
    from experiments.bench._devices import request_cpu_devices

    request_cpu_devices()

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.bench.multigpu import _versions, write_results  # noqa: E402
from experiments.configs import Config, apply_preset  # noqa: E402
from experiments.plot_runs import load_curve  # noqa: E402

__all__ = ["run_config", "compare", "markdown", "plot", "main"]

BEGIN, END = "<!-- multigpu-train begin -->", "<!-- multigpu-train end -->"


def _name(mesh: str) -> str:
    return "single" if not mesh else mesh.replace("=", "").replace(",", "_")


def run_config(mesh: str, *, task: str, model: str, length: int, steps: int, batch: int,
               out: Path, preset: str = "paper", log_every: int = 10, warmup: int = 20,
               eval_per_length: int = 32, **overrides) -> Config:
    """The training run of one mesh: ``preset``'s architecture, every example ``length``
    tokens long, a short schedule."""
    cfg = apply_preset(Config(task=task, model=model), preset)
    return dataclasses.replace(
        cfg, train_min=length, train_max=length, test_min=length, test_max=length,
        steps=steps, batch=batch, warmup=min(warmup, steps), log_every=log_every,
        ckpt_every=steps, keep_checkpoints=1, eval_per_length=eval_per_length,
        eval_batch=batch, mesh=mesh, out=str(out / _name(mesh)), **overrides)


def compare(run_dirs: list[Path]) -> list[dict]:
    """Per run: step time, max |loss - loss of the first run|, last metrics, evaluation."""
    curves = [load_curve(d) for d in run_dirs]
    ref = {r["step"]: r["loss"] for r in curves[0]}
    rows = []
    for d, curve in zip(run_dirs, curves, strict=True):
        cfg = json.loads((d / "config.json").read_text())
        steps = [r["step"] for r in curve]
        secs = [r["seconds"] for r in curve]
        # the first logged interval holds the compilation: time the later ones
        ms = (1e3 * (secs[-1] - secs[0]) / (steps[-1] - steps[0])) if len(curve) > 1 else None
        common = [r for r in curve if r["step"] in ref]
        diff = max(abs(r["loss"] - ref[r["step"]]) for r in common) if common else None
        ev = d / "eval.json"
        acc = json.loads(ev.read_text())["mean_accuracy"] if ev.exists() else None
        rows.append(dict(name=d.name, mesh=cfg["mesh"] or "one device", ms=ms,
                         max_diff=diff, loss=curve[-1]["loss"],
                         accuracy=curve[-1]["accuracy"], eval=acc, steps=steps[-1]))
    return rows


def markdown(rows: list[dict], cfg: Config, command: str, *, devices: str | None = None,
             versions: str | None = None, date: str | None = None) -> str:
    """The table; ``devices`` / ``versions`` / ``date`` default to this process's (pass them
    when comparing runs made elsewhere)."""
    devs = jax.devices()
    kinds = sorted({d.device_kind for d in devs})
    base = rows[0]["ms"]
    date = date or f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    here = f"{len(devs)} x {', '.join(kinds)} ({devs[0].platform})"
    lines = [
        "## Training on a (data, seq) mesh against one device",
        "",
        f"- date: {date}",
        f"- devices: {devices or here}",
        f"- versions: {versions or _versions()}",
        f"- run: {cfg.task} / {cfg.model} ({cfg.eigen}), {cfg.layers} layers, d_model "
        f"{cfg.d_model}, heads {cfg.heads}, implementation {cfg.implementation!r}, "
        f"{'bf16' if cfg.bf16 else 'f32'}; every example {cfg.train_max} tokens, batch "
        f"{cfg.batch}, {cfg.steps} steps, lr {cfg.lr:g} (warmup {cfg.warmup}), seed {cfg.seed}",
        f"- command: `{command}`",
        "- ms/step: logged intervals after the first (which holds the compilation); "
        "max |dloss|: over every logged step (a mean of "
        f"{cfg.log_every} steps), against the first row",
        "",
        "| mesh | steps logged | ms/step | speed-up | max abs dloss | last loss | last acc | "
        "eval acc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    for r in rows:
        sp = None if (base is None or r["ms"] is None) else base / r["ms"]
        lines.append(f"| {r['mesh']} | {r['steps']} | {f(r['ms'], '.1f')} | {f(sp, '.2f')} | "
                     f"{f(r['max_diff'], '.2e')} | {r['loss']:.4f} | {r['accuracy']:.3f} | "
                     f"{f(r['eval'], '.3f')} |")
    if devices is None and devs[0].platform == "cpu":
        lines += ["", "Virtual CPU devices share this machine's cores: the times say nothing "
                  "about scaling."]
    return "\n".join(lines) + "\n"


def plot(run_dirs: list[Path], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [load_curve(d) for d in run_dirs]
    ref = {r["step"]: r["loss"] for r in curves[0]}
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(6.5, 5), sharex=True,
                                 gridspec_kw=dict(height_ratios=[2, 1]))
    for i, (d, c) in enumerate(zip(run_dirs, curves, strict=True)):
        ax.plot([r["step"] for r in c], [r["loss"] for r in c], lw=1.2, color=f"C{i}",
                label=d.name)
        if i:
            pts = [(r["step"], r["loss"] - ref[r["step"]]) for r in c if r["step"] in ref]
            bx.plot(*zip(*pts, strict=True), lw=1.0, marker=".", color=f"C{i}")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    bx.axhline(0.0, color="0.6", lw=0.8)
    bx.set_ylabel(f"loss - {run_dirs[0].name}")
    bx.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from experiments.common.cli import positive_int
    from experiments.train import run as train_run

    p = argparse.ArgumentParser(prog="python -m experiments.bench.multigpu_train",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meshes", nargs="+", default=["", "data=2,seq=2", "data=1,seq=4"],
                   help='mesh specs; "" is one device (the reference, put it first)')
    p.add_argument("--task", default="parity")
    p.add_argument("--model", default="deltanet")
    p.add_argument("--preset", default="paper")
    p.add_argument("--length", type=positive_int, default=16384)
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--log-every", type=positive_int, default=10)
    p.add_argument("--eval-per-length", type=positive_int, default=32)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="other Config fields, e.g. d_model=32 chunk_size=16 (small CPU runs)")
    p.add_argument("--cpu-devices", type=positive_int, default=4,
                   help="virtual devices when running on CPU (read before JAX starts)")
    p.add_argument("--out", default="benchmarks/multigpu_train")
    p.add_argument("--results", default="benchmarks/RESULTS.md",
                   help="also put the table into this file's multigpu-train section ('' = no)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN_DIR",
                   help="train nothing: compare these run directories (the first is the "
                   "reference) and write the table and figure to --out")
    p.add_argument("--devices", default=None, help="with --compare: the devices line")
    p.add_argument("--versions", default=None, help="with --compare: the versions line")
    p.add_argument("--date", default=None, help="with --compare: the date line")
    a = p.parse_args(argv)
    command = "python -m experiments.bench.multigpu_train " + " ".join(
        (f'"{x}"' if not x or " " in x else x) for x in (argv if argv is not None
                                                          else sys.argv[1:]))
    if a.compare:
        dirs = [Path(d) for d in a.compare]
        missing = [str(d) for d in dirs if not (d / "metrics.jsonl").is_file()
                   or not (d / "config.json").is_file()]
        if missing:
            p.error(f"--compare: not a run directory (config.json and metrics.jsonl): "
                    f"{', '.join(missing)}")
        cfg0 = json.loads((dirs[0] / "config.json").read_text())
        cfg = Config(**{k: v for k, v in cfg0.items() if k in
                        {f.name for f in dataclasses.fields(Config)}})
        return _report(dirs, cfg, command, Path(a.out), a.results, devices=a.devices,
                       versions=a.versions, date=a.date)

    from experiments.common.cli import UsageError, fail, set_overrides

    prog = "python -m experiments.bench.multigpu_train"
    try:
        extra = set_overrides(a.set, Config)
        cfgs = [check_run_config(run_config(
            mesh, task=a.task, model=a.model, length=a.length, steps=a.steps, batch=a.batch,
            out=Path(a.out), preset=a.preset, log_every=a.log_every,
            eval_per_length=a.eval_per_length, progress=a.progress, **extra))
            for mesh in a.meshes]
    except ValueError as e:  # UsageError, and the presets' and configs' ValueErrors
        fail(prog, e)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dirs = []
    for cfg in cfgs:
        mesh = cfg.mesh
        d = Path(cfg.out)
        if d.exists():  # a fresh run, not a resumed one
            shutil.rmtree(d)
        print(f"multigpu_train: mesh {mesh or 'one device'!r} -> {d}", file=sys.stderr)
        try:
            train_run(cfg)
        except UsageError as e:
            fail(prog, e)
        shutil.rmtree(d / "checkpoints", ignore_errors=True)
        dirs.append(d)
    return _report(dirs, cfgs[0], command, out, a.results)


def check_run_config(cfg: Config) -> Config:
    """``cfg`` if its names, values and mesh are valid here; ValueError naming the flag
    otherwise (before any mesh trains)."""
    from experiments.common.mesh import make_mesh, parse_mesh
    from experiments.models import model_names
    from experiments.tasks import get_task
    from experiments.train import check_config

    get_task(cfg.task)
    if cfg.model not in model_names():
        raise ValueError(f"--model {cfg.model!r}: valid models: {', '.join(model_names())}")
    check_config(cfg)
    parse_mesh(cfg.mesh)
    make_mesh(cfg.mesh)  # enough devices
    return cfg


def _report(dirs, cfg: Config, command: str, out: Path, results: str, **info) -> int:
    out.mkdir(parents=True, exist_ok=True)
    rows = compare(dirs)
    md = markdown(rows, cfg, command, **info)
    (out / "table.md").write_text(md)
    where = info.get("devices") or (f"{len(jax.devices())} x "
                                    f"{jax.devices()[0].device_kind}")
    plot(dirs, out / "curves.png", title=f"{cfg.task} / {cfg.model}, T = {cfg.train_max}, "
         f"batch {cfg.batch} ({where})")
    if results:
        write_results(results, md, begin=BEGIN, end=END)
    print(md)
    diffs = [r["max_diff"] for r in rows[1:] if r["max_diff"] is not None]
    return 0 if all(np.isfinite(diffs)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
