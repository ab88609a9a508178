"""experiments.reproduce: the grid runner's bookkeeping (the training itself is tested in
tests/test_train.py; here fake run directories stand in for finished runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from experiments import reproduce


def _fake_run(out, task, model, eigen, seed, acc, scaled, step=100):
    d = reproduce.run_dir(out, task, model, eigen, seed)
    d.mkdir(parents=True)
    (d / "eval.json").write_text(json.dumps(
        {"lengths": [40, 41], "accuracy": [acc, acc], "mean_accuracy": acc,
         "scaled_accuracy": scaled}))
    (d / "metrics.jsonl").write_text(json.dumps({"step": step, "loss": 0.1}) + "\n")


def test_summary_takes_the_best_seed_and_marks_missing_runs(tmp_path):
    _fake_run(tmp_path, "parity", "diagonal", "signed", 0, 0.9, 0.8)
    _fake_run(tmp_path, "parity", "diagonal", "signed", 1, 1.0, 1.0)
    # seed 2 never finished: only metrics, no eval.json
    d = reproduce.run_dir(tmp_path, "parity", "diagonal", "signed", 2)
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text(json.dumps({"step": 7}) + "\n")
    rc = reproduce.main(["--out", str(tmp_path), "--summary-only", "--seeds", "0", "1", "2",
                         "--runs", "parity:diagonal:signed", "parity:deltanet:unit"])
    assert rc == 0
    rows = json.loads((tmp_path / "summary.json").read_text())
    first, second = rows
    assert first["best_seed"] == 1 and first["best_scaled_accuracy"] == 1.0
    assert first["paper_scaled_accuracy"] == 1.0
    assert [s["steps"] for s in first["seeds"]] == [100, 100, 7]
    assert first["seeds"][2]["mean_accuracy"] is None
    assert second["best_seed"] is None  # nothing ran
    md = (tmp_path / "summary.md").read_text()
    assert "| parity | diagonal | [-1, 1] | - | 0.900 / 1.000 / - | 0.800 / 1.000 / - | 1.000 " \
        "| 0.900 | 1.000 |" in md
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_bad_run_spec_names_the_format():
    with pytest.raises(argparse.ArgumentTypeError, match="TASK:MODEL:EIGEN"):
        reproduce.parse_run("parity:diagonal")
    with pytest.raises(argparse.ArgumentTypeError, match="unit\\|signed"):
        reproduce.parse_run("parity:diagonal:negative")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown task '../../x'"):
        reproduce.parse_run("../../x:diagonal:unit")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown model 'mamba9'"):
        reproduce.parse_run("parity:mamba9:unit")
    with pytest.raises(argparse.ArgumentTypeError, match="N_H must be a positive integer"):
        reproduce.parse_run("s3:deltaproduct:signed:0")
    assert reproduce.parse_run("s3:deltaproduct:signed:2") == ("s3", "deltaproduct", "signed", 2)
    assert reproduce.run_dir(Path("o"), "s3", "deltaproduct", "signed", 1, 2) == Path(
        "o/s3-deltaproduct-signed-nh2/seed_1")


def test_a_failing_row_makes_the_grid_fail(tmp_path, capsys):
    rc = reproduce.main(["--out", str(tmp_path), "--runs", "parity:diagonal:unit", "--seeds", "0",
                         "--preset", "tiny", "--", "--steps", "0"])
    assert rc == 1
    assert "parity-diagonal-unit" in capsys.readouterr().err
