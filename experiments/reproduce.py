"""Runs a grid of training runs (tasks x models x eigenvalue ranges [x n_h] x seeds) and
tabulates them.

    python -m experiments.reproduce --preset cpu --seeds 0 1 2 --out runs/repro_cpu
    python -m experiments.reproduce --preset paper --jobs 4 --out runs/repro_paper   # a GPU
    python -m experiments.reproduce --runs s3:deltaproduct:signed:2 s3:deltaproduct:signed:1 \\
        --preset paper --seeds 0 1 2 --out runs/s3
    python -m experiments.reproduce --runs parity:diagonal:unit parity:diagonal:signed \\
        --preset cpu --seeds 0 --out runs/x -- --steps 500        # extra flags after --
    python -m experiments.reproduce ... --deadline-s 540 --out runs/s3  # a time-limited GPU
        # call: rows still running at 540 s are killed, exit 3; the same command resumes them

A grid row is ``TASK:MODEL:EIGEN`` or ``TASK:MODEL:EIGEN:N_H``. Each row's seeds train as one
vmapped ensemble in one process: ``python -m experiments.train --task T --model M --eigen E
[--n-h N] --preset P --seeds S1 S2 ... --out OUT/T-M-E[-nhN] [extra]`` (``--jobs`` rows at a
time; output in ``OUT/<row>/train.log``), which writes one complete run per seed,
``OUT/<row>/seed_<s>``. A rerun resumes unfinished rows from their checkpoints and skips
finished ones; every row's flags are parsed and checked before any row starts (a bad preset
or extra flag is one ``error:`` line, exit status 2, nothing written), and a row whose process
fails makes the grid exit with status 1. At the end it
writes ``OUT/summary.md`` / ``summary.json`` (mean accuracy over the test lengths with its 95%
interval and the scaled accuracy per seed, the best and the mean of the seeds, and the published
number where there is one: Grazzi et al.'s is a best of 3 seeds) and ``OUT/summary.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

# Grazzi et al. (ICLR 2025), Table 3: scaled accuracy, best of 3 seeds.
PAPER = {
    ("parity", "diagonal", "unit"): 0.000,
    ("parity", "diagonal", "signed"): 1.000,
    ("parity", "deltanet", "unit"): 0.017,
    ("parity", "deltanet", "signed"): 1.000,
    ("modular_arithmetic", "diagonal", "unit"): 0.095,
    ("modular_arithmetic", "diagonal", "signed"): 0.241,
    ("modular_arithmetic", "deltanet", "unit"): 0.314,
    ("modular_arithmetic", "deltanet", "signed"): 0.971,
    ("modular_arithmetic_brackets", "diagonal", "unit"): 0.123,
    ("modular_arithmetic_brackets", "diagonal", "signed"): 0.116,
    ("modular_arithmetic_brackets", "deltanet", "unit"): 0.194,
    ("modular_arithmetic_brackets", "deltanet", "signed"): 0.260,
}
# The rows the README reports (the [train] issue's reproduction table).
DEFAULT_RUNS = (
    "parity:diagonal:unit",
    "parity:diagonal:signed",
    "parity:deltanet:unit",
    "parity:deltanet:signed",
    "modular_arithmetic:deltanet:unit",
    "modular_arithmetic:deltanet:signed",
)


def parse_run(spec: str) -> tuple:
    """``TASK:MODEL:EIGEN`` or ``TASK:MODEL:EIGEN:N_H`` -> a tuple (names checked)."""
    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[2] not in ("unit", "signed"):
        raise argparse.ArgumentTypeError(
            f"--runs entries are TASK:MODEL:EIGEN[:N_H] with EIGEN unit|signed, got {spec!r}"
        )
    from experiments.models import model_names
    from experiments.tasks import is_task, task_names

    task, model = parts[0], parts[1]
    if not is_task(task):
        raise argparse.ArgumentTypeError(f"--runs {spec!r}: unknown task {task!r}; valid tasks: "
                                         f"{', '.join(task_names())}")
    if model not in model_names():
        raise argparse.ArgumentTypeError(f"--runs {spec!r}: unknown model {model!r}; valid "
                                         f"models: {', '.join(model_names())}")
    if len(parts) == 4:
        if not parts[3].isdigit() or int(parts[3]) < 1:
            raise argparse.ArgumentTypeError(f"--runs {spec!r}: N_H must be a positive integer")
        return task, model, parts[2], int(parts[3])
    return task, model, parts[2]


def row_name(row: tuple) -> str:
    task, model, eigen = row[:3]
    return f"{task}-{model}-{eigen}" + (f"-nh{row[3]}" if len(row) > 3 else "")


def run_dir(out: Path, task: str, model: str, eigen: str, seed: int, n_h: int | None = None
            ) -> Path:
    """Where the seed's run of a grid row lives: ``OUT/<row>/seed_<seed>``."""
    row = (task, model, eigen) + (() if n_h is None else (n_h,))
    return out / row_name(row) / f"seed_{seed}"


def _row_dirs(out: Path, row: tuple, seeds) -> list[Path]:
    return [run_dir(out, *row[:3], s, *row[3:]) for s in seeds]


def _train_args(out: Path, row: tuple, seeds, preset, extra) -> list[str]:
    """The ``experiments.train`` flags of a grid row."""
    task, model, eigen = row[:3]
    args = ["--task", task, "--model", model, "--eigen", eigen, "--seeds", *map(str, seeds),
            "--out", str(out / row_name(row)), "--no-progress"]
    if len(row) > 3:
        args += ["--n-h", str(row[3])]
    if preset:
        args += ["--preset", preset]
    return args + list(extra)


def check_rows(out: Path, runs, seeds, preset, extra) -> None:
    """Parses and checks every row's training flags as its process would, before any starts
    (a bad preset or extra flag is one error, not a failed row each); UsageError naming the
    row otherwise. Touches no device."""
    from experiments.common.cli import UsageError
    from experiments.train import check_config, parse_args

    for row in runs:
        try:
            check_config(parse_args(_train_args(out, row, seeds, preset, extra)))
        except ValueError as e:  # parse_args raises UsageError, check_config ValueError
            raise UsageError(f"row {':'.join(map(str, row))}: {e}") from None


def _child_command(train_args: list[str]) -> list[str]:
    """The process that trains one row."""
    return [sys.executable, "-m", "experiments.train", *train_args]


def _train(out: Path, row: tuple, seeds, preset, extra, timeout, deadline=None) -> dict:
    """Trains one row (its seeds as one ensemble) in a child process, at most ``timeout``
    seconds (0: no limit) and not past the ``time.time()`` ``deadline``; a row stopped by
    either is killed and resumes from its last checkpoint on a rerun."""
    d = out / row_name(row)
    if d.is_symlink() or any(p.is_symlink() for p in _row_dirs(out, row, seeds)):
        return {"dir": str(d), "status": "refused: a run directory is a symbolic link",
                "seconds": 0.0, "ok": False}
    if all((p / "eval.json").exists() for p in _row_dirs(out, row, seeds)):
        return {"dir": str(d), "status": "done before", "seconds": 0.0, "ok": True}
    stopped = None
    if deadline is not None:
        left = deadline - time.time()
        if left <= 1.0:
            return {"dir": str(d), "status": "not started: --deadline-s reached (rerun to "
                    "resume)", "seconds": 0.0, "ok": False, "deadline": True}
        if not timeout or left < timeout:
            timeout, stopped = left, "stopped at --deadline-s"
    d.mkdir(parents=True, exist_ok=True)
    cmd = _child_command(_train_args(out, row, seeds, preset, extra))
    t0 = time.time()
    with open(d / "train.log", "a") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout or None).returncode
            status, ok = ("ok", True) if rc == 0 else (f"exit {rc}", False)
        except subprocess.TimeoutExpired:
            status, ok = f"{stopped or 'timed out'} after {timeout:.0f} s (rerun to resume)", False
    return {"dir": str(d), "status": status, "seconds": time.time() - t0, "ok": ok,
            "deadline": bool(stopped) and not ok and status.startswith(stopped)}


def _last_metrics(d: Path) -> dict:
    from experiments.train import _read_metrics  # tolerates a torn last line

    recs = _read_metrics(d / "metrics.jsonl")
    return recs[-1] if recs else {}


def summarise(out: Path, runs, seeds) -> list[dict]:
    rows = []
    for row in runs:
        task, model, eigen = row[:3]
        per_seed = []
        for s, d in zip(seeds, _row_dirs(out, row, seeds)):
            ev = d / "eval.json"
            last = _last_metrics(d)
            rec = {"seed": s, "mean_accuracy": None, "mean_accuracy_ci": None,
                   "scaled_accuracy": None, "sequences": None, "steps": last.get("step")}
            if ev.exists():
                e = json.loads(ev.read_text())
                rec.update(mean_accuracy=e["mean_accuracy"], scaled_accuracy=e["scaled_accuracy"],
                           mean_accuracy_ci=e.get("mean_accuracy_ci"),
                           sequences=e.get("sequences"))
                if "sequence_accuracy" in e:  # per-token tasks: DeltaProduct's metric
                    conf = json.loads((d / "config.json").read_text())
                    L = conf["length"] or conf["train_max"]
                    if L in e["lengths"]:
                        rec["sequence_accuracy_at_train"] = e["sequence_accuracy"][
                            e["lengths"].index(L)]
                    rec["train_length"] = L
                    rec["length_90"] = e["length_90"]
            per_seed.append(rec)
        done = [r for r in per_seed if r["scaled_accuracy"] is not None]
        best = max(done, key=lambda r: r["scaled_accuracy"]) if done else None
        rows.append({
            "task": task, "model": model, "eigen": eigen,
            "n_h": row[3] if len(row) > 3 else None, "seeds": per_seed,
            "best_seed": None if best is None else best["seed"],
            "best_mean_accuracy": None if best is None else best["mean_accuracy"],
            "best_scaled_accuracy": None if best is None else best["scaled_accuracy"],
            "mean_scaled_accuracy": (round(sum(r["scaled_accuracy"] for r in done) / len(done), 6)
                                     if done else None),
            "paper_scaled_accuracy": PAPER.get((task, model, eigen)),
        })
    return rows


def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def write_summary(out: Path, rows, header: str) -> None:
    lines = [header, "",
             "| task | model | eigenvalues | n_h | mean acc per seed [95% CI] | scaled per seed "
             "| best scaled | mean scaled | paper (best of 3) |",
             "|---|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        rng = "[0, 1]" if r["eigen"] == "unit" else "[-1, 1]"
        accs = " / ".join(_fmt(s["mean_accuracy"]) + (
            f" [{_fmt(s['mean_accuracy_ci'][0])}, {_fmt(s['mean_accuracy_ci'][1])}]"
            if s.get("mean_accuracy_ci") else "") for s in r["seeds"])
        scaled = " / ".join(_fmt(s["scaled_accuracy"]) for s in r["seeds"])
        nh = "-" if r.get("n_h") is None else str(r["n_h"])
        lines.append(f"| {r['task']} | {r['model']} | {rng} | {nh} | {accs} | {scaled} | "
                     f"{_fmt(r['best_scaled_accuracy'])} | {_fmt(r.get('mean_scaled_accuracy'))} "
                     f"| {_fmt(r['paper_scaled_accuracy'])} |")
    per_token = [r for r in rows if any("length_90" in s for s in r["seeds"])]
    if per_token:
        lines += ["", "Group word problems (per-token labels): the fraction of test sequences "
                  "right at every position up to the training length, and the longest length "
                  "up to which at least 90% of them are right (`length_90`), per seed.", "",
                  "| task | model | eigenvalues | n_h | all correct up to the train length "
                  "| length_90 |", "|---|---|---|---|---|---|"]
        for r in per_token:
            rng = "[0, 1]" if r["eigen"] == "unit" else "[-1, 1]"
            at = " / ".join(_fmt(s.get("sequence_accuracy_at_train")) for s in r["seeds"])
            l90 = " / ".join(str(s.get("length_90", "-")) for s in r["seeds"])
            nh = "-" if r.get("n_h") is None else str(r["n_h"])
            lines.append(f"| {r['task']} | {r['model']} | {rng} | {nh} | {at} | {l90} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a dev extra: the table is the result
        return
    labels = [f"{r['task'].replace('modular_arithmetic', 'mod')}\n{r['model']} "
              f"{'[0,1]' if r['eigen'] == 'unit' else '[-1,1]'}"
              + ("" if r.get("n_h") is None else f" nh{r['n_h']}") for r in rows]
    ours = [r["best_scaled_accuracy"] or 0.0 for r in rows]
    paper = [r["paper_scaled_accuracy"] or 0.0 for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.6))
    ax.bar([i - 0.2 for i in x], ours, 0.4, label="ours (best seed)")
    ax.bar([i + 0.2 for i in x], paper, 0.4, label="Grazzi et al. (best of 3)")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("scaled accuracy, lengths 40-256")
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(header.lstrip("# ").split("\n")[0][:90], fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    from experiments.common.cli import UsageError, nonnegative_float, nonnegative_int

    p = argparse.ArgumentParser(prog="python -m experiments.reproduce",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory of the runs and the summary")
    p.add_argument("--preset", default="cpu",
                   help="preset of every run (cpu, paper, slice, tiny)")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=parse_run, nargs="+", default=None,
                   help="TASK:MODEL:EIGEN[:N_H] entries (default: the README's reproduction rows)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="runs at a time")
    p.add_argument("--timeout", type=nonnegative_float, default=0.0,
                   help="seconds per run (0: none); a timed-out run resumes on a rerun")
    p.add_argument("--deadline-s", type=nonnegative_float, default=0.0,
                   help="seconds for the whole grid (0: none): rows still running then are "
                        "killed, rows not started are not started; a rerun resumes them from "
                        "their checkpoints. Exit status 3 when the deadline stopped the grid")
    p.add_argument("--summary-only", action="store_true", help="only tabulate existing runs")
    args = p.parse_args(argv)
    runs = args.runs or [parse_run(s) for s in DEFAULT_RUNS]
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds has repeated seeds: {args.seeds}")
    if not args.summary_only:
        try:
            check_rows(Path(args.out), runs, args.seeds, args.preset, extra)
        except UsageError as e:
            p.error(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed, stopped = [], []
    if not args.summary_only:
        t0 = time.time()
        deadline = t0 + args.deadline_s if args.deadline_s else None
        with cf.ThreadPoolExecutor(args.jobs) as pool:
            futs = {pool.submit(_train, out, row, args.seeds, args.preset, extra, args.timeout,
                                deadline): row for row in runs}
            for f in tqdm(cf.as_completed(futs), total=len(futs), desc="grid rows"):
                r = f.result()
                if r.get("deadline"):
                    stopped.append(r)
                elif not r["ok"]:
                    failed.append(r)
                tqdm.write(f"{Path(r['dir']).name}: {r['status']} ({r['seconds']:.0f} s)")
        print(f"all runs: {time.time() - t0:.0f} s wall")
    rows = summarise(out, runs, args.seeds)
    extra_s = (" " + " ".join(extra)) if extra else ""
    header = (f"# Reproduction: preset {args.preset}, seeds {args.seeds}{extra_s}\n\n"
              f"Command: `python -m experiments.reproduce --preset {args.preset} --seeds "
              f"{' '.join(map(str, args.seeds))}"
              f"{' --runs ' + ' '.join(':'.join(map(str, r)) for r in runs) if args.runs else ''}"
              f" --out {args.out}"
              f"{' -- ' + ' '.join(extra) if extra else ''}`. Mean accuracy over the test "
              "lengths; scaled = (acc - chance) / (1 - chance).")
    write_summary(out, rows, header)
    print((out / "summary.md").read_text())
    if failed:
        for r in failed:
            print(f"error: {r['dir']}: {r['status']} (see its train.log)", file=sys.stderr)
        return 1
    if stopped:
        print(f"{len(stopped)} of {len(runs)} rows stopped by --deadline-s {args.deadline_s:g}; "
              "rerun the same command to resume them", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
