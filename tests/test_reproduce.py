"""experiments.reproduce: the grid runner's bookkeeping (the training itself is tested in
tests/test_train.py; here fake run directories stand in for finished runs)."""

from __future__ import annotations

import argparse
import json

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
    assert "| parity | diagonal | [-1, 1] | 0.900 / 1.000 / - |" in md
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_bad_run_spec_names_the_format():
    with pytest.raises(argparse.ArgumentTypeError, match="TASK:MODEL:EIGEN"):
        reproduce.parse_run("parity:diagonal")
    with pytest.raises(argparse.ArgumentTypeError, match="unit\\|signed"):
        reproduce.parse_run("parity:diagonal:negative")
