"""``make demo``: the structures table, then parity with eigenvalues in [0, 1] vs [-1, 1].

1. ``experiments.structures.main(T=1024)``: scan vs scan_sequential per structure (error in
   float32 / bfloat16 and timings).
2. A small Mamba-style diagonal model trained on parity (lengths 3-40) twice, with
   ``eigen="unit"`` and ``eigen="signed"``, evaluated at lengths 3-256: a table of accuracy per
   length range and a plot ``runs/demo/parity.png``. Negative eigenvalues let the linear RNN
   count modulo 2 (Grazzi et al., 2025); with eigenvalues in [0, 1] it stays near chance
   beyond the training lengths.

Runs in a few minutes on 2 CPU cores. ``LRNN_DEMO_SMALL=1`` (or ``--small``, or
``main(small=True)``) runs a seconds-long version for the tests; ``--out DIR`` puts the runs
and the plot in DIR (default ``runs/demo``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from experiments.configs import Config, apply_preset
from experiments.train import eval_summary, evaluate_lengths, train

__all__ = ["demo_config", "RANGES", "main", "cli"]

# Length ranges of the table: the training range, then three extrapolation ranges.
RANGES = ((3, 40), (41, 64), (65, 128), (129, 256))
SMALL_RANGES = ((3, 12), (13, 16), (17, 24))


def demo_config(eigen: str, out: Path, small: bool = False) -> Config:
    """The demo's run: the ``cpu`` parity preset for the diagonal model, shortened."""
    if small:
        cfg = apply_preset(Config(task="parity", model="diagonal"), "tiny")
        return dataclasses.replace(cfg, eigen=eigen, out=str(out / f"parity_{eigen}"),
                                   implementation="sequential")
    cfg = apply_preset(Config(task="parity", model="diagonal"), "cpu")
    return dataclasses.replace(cfg, eigen=eigen, out=str(out / f"parity_{eigen}"), steps=600,
                               warmup=60, log_every=50, ckpt_every=600, eval_per_length=8)


def _structures(small: bool) -> None:
    from experiments import structures

    if small:
        structures.main(T=32, n=4, repeats=1)
    else:
        structures.main(T=1024, repeats=3)
    print()


def _table(results: dict[str, dict], ranges) -> str:
    head = "| eigenvalues | " + " | ".join(f"len {a}-{b}" for a, b in ranges) + " |"
    sep = "|---" * (len(ranges) + 1) + "|"
    rows = [head, sep]
    for eigen, res in results.items():
        lengths, acc = np.asarray(res["lengths"]), np.asarray(res["accuracy"])
        cells = [f"{acc[(lengths >= a) & (lengths <= b)].mean():.3f}" for a, b in ranges]
        name = {"unit": "[0, 1] (unit)", "signed": "[-1, 1] (signed)"}[eigen]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _plot(results: dict[str, dict], train_hi: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for (eigen, res), color in zip(results.items(), ("tab:blue", "tab:orange")):
        label = {"unit": "eigenvalues in [0, 1]", "signed": "eigenvalues in [-1, 1]"}[eigen]
        acc = np.asarray(res["accuracy"])
        w = min(9, len(acc))  # moving average over 9 lengths; raw values faint
        smooth = np.convolve(np.pad(acc, (w // 2, w - 1 - w // 2), mode="edge"),
                             np.ones(w) / w, mode="valid")
        ax.plot(res["lengths"], acc, lw=0.6, alpha=0.3, color=color)
        ax.plot(res["lengths"], smooth, lw=1.6, color=color, label=label)
    ax.axvspan(3, train_hi, color="0.9", label="training lengths")
    ax.axhline(0.5, ls="--", color="0.5", lw=1, label="chance")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("parity accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.set_title("Mamba-style diagonal linear RNN on parity")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(small: bool | None = None, out: str | Path = "runs/demo",
         structures: bool = True) -> dict[str, dict]:
    """Run the demo; returns ``{eigen: eval record over all lengths}``.

    Args:
      small: seconds-long version (default: ``LRNN_DEMO_SMALL`` set).
      out: directory of the two runs and the plot.
      structures: print the structures table first.
    """
    if small is None:
        small = os.environ.get("LRNN_DEMO_SMALL", "") not in ("", "0")
    t0 = time.perf_counter()
    out = Path(out)
    if structures:
        _structures(small)
    ranges = SMALL_RANGES if small else RANGES
    lengths = list(range(ranges[0][0], ranges[-1][1] + 1))
    results = {}
    for eigen in ("unit", "signed"):
        cfg = demo_config(eigen, out, small)
        shutil.rmtree(cfg.out, ignore_errors=True)  # always train afresh
        t = time.perf_counter()
        print(f"training {cfg.model} on {cfg.task}, eigen={eigen}: {cfg.steps} steps, "
              f"{cfg.layers} layers, d_model={cfg.d_model}, lengths {ranges[0][0]}-{ranges[0][1]}")
        model, task = train(cfg)
        accs = evaluate_lengths(model, task, lengths, per_length=cfg.eval_per_length,
                                batch=cfg.eval_batch, seed=cfg.seed)
        results[eigen] = eval_summary(lengths, accs, task.chance)
        Path(cfg.out, "eval_all_lengths.json").write_text(json.dumps(results[eigen]) + "\n")
        print(f"  done in {time.perf_counter() - t:.0f} s")
    print()
    print("Parity accuracy per length range (train on 3-40; chance 0.5):")
    print(_table(results, ranges))
    path = out / "parity.png"
    _plot(results, ranges[0][1], path)
    print(f"\nplot: {path}   (total {time.perf_counter() - t0:.0f} s)")
    return results


def cli(argv: list[str] | None = None) -> dict[str, dict]:
    """``python -m experiments.demo [--small] [--out DIR]``."""
    p = argparse.ArgumentParser(prog="python -m experiments.demo",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true",
                   help="the seconds-long version (also LRNN_DEMO_SMALL=1)")
    p.add_argument("--out", default="runs/demo", help="directory of the two runs and the plot")
    a = p.parse_args(argv)
    return main(small=True if a.small else None, out=a.out)


if __name__ == "__main__":
    cli()
