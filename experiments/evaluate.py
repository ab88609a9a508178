"""Evaluate a trained run at chosen lengths.

Usage::

    python -m experiments.evaluate runs/parity_signed --lengths 300,400,500

Restores the latest checkpoint of the run directory (its ``config.json`` rebuilds the task
and model) and prints the same record as the run's ``eval.json`` (``lengths``, ``accuracy``,
``mean_accuracy``, ``scaled_accuracy``, the number of sequences per length and 95% Wilson
intervals; for group word problems also ``sequence_accuracy``) as JSON. Without ``--lengths``
the task's test lengths are used. ``--per-length`` defaults to the run's value, and to at least
256 sequences per length (fewer give noisy accuracies: 16 per length made a [0, 1]-eigenvalue
parity model score 0.75 at length 500 where 256 gave 0.47).

It only reads the run: nothing in the directory is created, moved or written (a read-only
run evaluates; an unreadable newest checkpoint is skipped with a warning). Batches hold at
most the sequences evaluated and fit a memory budget (``experiments.train.Evaluator``); a
length at which one sequence alone would not fit is refused. A bad flag, a directory that is
not a run, or such a length ends with one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from flax import nnx

from experiments.common.cli import UsageError, fail, int_list, positive_int
from experiments.configs import Config
from experiments.train import evaluate, init_state, make_task, restore_latest

__all__ = ["load_run", "evaluate_run", "main"]

PROG = "python -m experiments.evaluate"


def load_config(run_dir: str | Path) -> Config:
    """The ``Config`` stored in ``run_dir/config.json`` (unknown keys rejected)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UsageError(f"{path} not found: is {run_dir} a training run directory?")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise UsageError(f"{path} is not JSON ({e})") from None
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = set(raw) - names if isinstance(raw, dict) else set()
    if not isinstance(raw, dict) or unknown:
        raise UsageError(f"{path} has unknown fields {sorted(unknown)}" if unknown else
                         f"{path} is not a config (a JSON object)")
    return Config(**raw)


def load_run(run_dir: str | Path):
    """``(model, task, cfg)`` restored from the latest checkpoint of ``run_dir``; reads only
    (nothing in ``run_dir`` is created or moved, so a read-only run evaluates)."""
    cfg = load_config(run_dir)
    task = make_task(cfg)
    graphdef, rest, state, _, _ = init_state(cfg, task)
    state, step = restore_latest(Path(run_dir), state, cfg.keep_checkpoints, read_only=True)
    if step == 0:
        raise UsageError(f"no checkpoint in {Path(run_dir) / 'checkpoints'}")
    return nnx.merge(graphdef, state["params"], rest), task, cfg


MIN_PER_LENGTH = 256


def evaluate_run(run_dir: str | Path, lengths: list[int] | None = None,
                 per_length: int | None = None) -> dict:
    """The eval.json record of ``run_dir`` at ``lengths`` (default: the task's test lengths).

    ``per_length`` (default: the run's ``eval_per_length``, at least 256) sequences per length.
    Bad arguments, a directory that is not a run, and lengths that do not fit in memory are
    UsageErrors.
    """
    def positive(n) -> bool:
        return not isinstance(n, bool) and isinstance(n, int | np.integer) and n >= 1

    if per_length is not None and not positive(per_length):
        raise UsageError(f"--per-length must be a positive integer, got {per_length!r}")
    if lengths is not None and (not len(lengths) or not all(map(positive, lengths))):
        raise UsageError(f"--lengths must be positive integers, got {list(lengths)!r}")
    per_length = None if per_length is None else int(per_length)
    model, task, cfg = load_run(run_dir)
    lengths = task.eval_sizes() if not lengths else lengths
    n = per_length or max(cfg.eval_per_length, MIN_PER_LENGTH)
    return evaluate(model, task, lengths, per_length=n, batch=cfg.eval_batch, seed=cfg.seed)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="output directory of a training run")
    p.add_argument("--lengths", type=int_list(), default=None,
                   help="comma-separated lengths (image tasks: sizes)")
    p.add_argument("--per-length", type=positive_int, default=None, help="examples per length")
    args = p.parse_args(argv)
    try:
        summary = evaluate_run(args.run_dir, args.lengths, args.per_length)
    except UsageError as e:
        fail(PROG, e)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
