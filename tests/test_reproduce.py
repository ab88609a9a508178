"""experiments.reproduce: the grid runner's bookkeeping (the training itself is tested in
tests/test_train.py; here fake run directories stand in for finished runs)."""

from __future__ import annotations

import argparse
import json
import sys
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
    # the flags parse and check; the child fails building the model (an image model on a
    # token task)
    rc = reproduce.main(["--out", str(tmp_path), "--runs", "parity:plstm:unit", "--seeds", "0",
                         "--preset", "tiny"])
    assert rc == 1
    assert "parity-plstm-unit" in capsys.readouterr().err


def test_bad_training_flags_are_refused_before_any_row_starts(tmp_path, capsys):
    # item 6 of the [runs] issue: one error line (exit 2), not a failed child per row
    for extra, words in ((["--", "--steps", "0"], "--steps must be a positive integer"),
                         (["--", "--bogus"], "Unrecognized options: --bogus"),
                         (["--preset", "gpu9"], "unknown preset 'gpu9'")):
        with pytest.raises(SystemExit) as e:
            reproduce.main(["--out", str(tmp_path / "o"), "--runs", "parity:diagonal:unit",
                            "--seeds", "0", "--preset", "tiny", *extra])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "error: row parity:diagonal:unit: " in err and words in err, err
        assert not (tmp_path / "o").exists()


def test_run_directories_are_not_followed_through_symbolic_links(tmp_path, capsys):
    # item 6 of the [runs] issue: a row (or seed) directory that is a link is refused, the
    # grid exits 1 and nothing is written where the link points
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "seed_0").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "parity-diagonal-unit").symlink_to(elsewhere, target_is_directory=True)
    (out / "parity-diagonal-signed").mkdir()
    (out / "parity-diagonal-signed" / "seed_0").symlink_to(elsewhere / "seed_0")
    rc = reproduce.main(["--out", str(out), "--runs", "parity:diagonal:unit",
                         "parity:diagonal:signed", "--seeds", "0", "--preset", "tiny"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "parity-diagonal-unit: refused: a run directory is a symbolic link" in err
    assert "parity-diagonal-signed: refused: a run directory is a symbolic link" in err
    assert [p.name for p in elsewhere.rglob("*")] == ["seed_0"]
    assert not (out / "parity-diagonal-signed" / "train.log").exists()


def test_a_grid_stopped_by_its_deadline_resumes(tmp_path, capsys, monkeypatch):
    # a GPU call has a time limit: --deadline-s kills the running rows (they resume from
    # their checkpoints) and starts no more; exit status 3 says the grid is not complete
    args = ["--out", str(tmp_path), "--runs", "parity:diagonal:unit", "parity:diagonal:signed",
            "--seeds", "0", "--preset", "tiny", "--jobs", "1"]
    # a row that outlasts the deadline (a child that sleeps): the first row starts and is
    # killed at 1.5 s, the second is not started
    with monkeypatch.context() as m:
        m.setattr(reproduce, "_child_command",
                  lambda _: [sys.executable, "-c", "import time; time.sleep(60)"])
        rc = reproduce.main([*args, "--deadline-s", "1.5"])
    cap = capsys.readouterr()
    assert rc == 3, cap.err
    assert "2 of 2 rows stopped by --deadline-s" in cap.err
    assert "stopped at --deadline-s after" in cap.out + cap.err
    assert "not started: --deadline-s reached" in cap.out + cap.err
    assert not list(tmp_path.glob("*/seed_0/eval.json"))
    # the same command without the deadline finishes them
    assert reproduce.main(args) == 0
    assert len(list(tmp_path.glob("*/seed_0/eval.json"))) == 2
