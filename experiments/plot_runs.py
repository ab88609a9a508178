"""Training curves of several runs in one figure, and their evaluation in a table.

Usage::

    python -m experiments.plot_runs benchmarks/arrow_pointing_h100/* --out curves.png
    python -m experiments.plot_runs runs/a runs/b --metric loss --smooth 5

Each argument is a run directory of ``python -m experiments.train`` (``metrics.jsonl``,
``config.json``, and ``eval.json`` once the run finished). The figure has one line per run
(``--metric`` against step, optionally a running mean over ``--smooth`` logged points); the
markdown table printed (and written with ``--table``) lists the run's model, learning rate,
steps logged of steps planned, the last logged metrics and the evaluation accuracy per test
length (``not evaluated`` when ``eval.json`` is missing, e.g. a run stopped early).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.common.cli import UsageError, fail, positive_int

__all__ = ["load_curve", "summarise_runs", "markdown_table", "plot", "main"]


def load_curve(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` in step order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(recs, key=lambda r: r["step"])


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def summarise_runs(run_dirs) -> list[dict]:
    """One row per run: name, model, lr, steps, last metrics and ``eval.json`` (or None)."""
    rows = []
    for d in map(Path, run_dirs):
        curve = load_curve(d)
        cfg = _read_json(d / "config.json") or {}
        last = curve[-1] if curve else {}
        rows.append(dict(
            run=d.name,
            model=cfg.get("model", "?"),
            lr=cfg.get("lr"),
            steps_planned=cfg.get("steps"),
            steps_logged=last.get("step", 0),
            last_loss=last.get("loss"),
            last_accuracy=last.get("accuracy"),
            eval=_read_json(d / "eval.json"),
        ))
    return rows


def _f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def markdown_table(rows: list[dict]) -> str:
    """The rows of :func:`summarise_runs` as a markdown table."""
    lines = ["| run | model | lr | steps logged / planned | last loss | last batch acc | eval |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ev = r["eval"]
        ev_txt = "not evaluated" if ev is None else ", ".join(
            f"{n}: {a:.3f}" for n, a in zip(ev["lengths"], ev["accuracy"]))
        lines.append(
            f"| {r['run']} | {r['model']} | {r['lr'] if r['lr'] is not None else '-'} | "
            f"{r['steps_logged']} / {r['steps_planned'] or '?'} | {_f(r['last_loss'])} | "
            f"{_f(r['last_accuracy'])} | {ev_txt} |")
    return "\n".join(lines) + "\n"


def _smooth(ys, n):
    if n <= 1:
        return ys
    out, acc = [], []
    for y in ys:
        acc.append(y)
        acc = acc[-n:]
        out.append(sum(acc) / len(acc))
    return out


def plot(run_dirs, out: str | Path, *, metric: str = "accuracy", smooth: int = 1,
         title: str = "") -> Path:
    """Writes the figure of ``metric`` against step, one line per run; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for d in map(Path, run_dirs):
        curve = [r for r in load_curve(d) if metric in r]
        if not curve:
            raise UsageError(f"{d}/metrics.jsonl has no {metric!r} records (--metric)")
        ax.plot([r["step"] for r in curve], _smooth([r[metric] for r in curve], smooth),
                label=d.name)
    ax.set_xlabel("step")
    ax.set_ylabel(metric + (f" (running mean of {smooth})" if smooth > 1 else ""))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    prog = "python -m experiments.plot_runs"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (metrics.jsonl inside; other "
                   "existing paths, as a glob gives them, are skipped)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--metric", default="accuracy", help="metrics.jsonl field (default accuracy)")
    p.add_argument("--smooth", type=positive_int, default=1,
                   help="running mean over this many points")
    p.add_argument("--title", default="")
    p.add_argument("--table", default="", help="also write the markdown table here")
    a = p.parse_args(argv)
    missing = [d for d in a.runs if not Path(d).exists()]
    if missing:
        p.error(f"no such run directory: {', '.join(missing)}")
    runs = sorted(d for d in a.runs if (Path(d) / "metrics.jsonl").exists())
    if not runs:
        p.error("no run directory with a metrics.jsonl among the arguments")
    try:
        plot(runs, a.out, metric=a.metric, smooth=a.smooth, title=a.title)
    except UsageError as e:
        fail(prog, e)
    table = markdown_table(summarise_runs(runs))
    if a.table:
        Path(a.table).write_text(table)
    print(table, end="")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
