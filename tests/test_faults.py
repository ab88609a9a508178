"""Faults a long run meets (issue [runs]): SIGKILL at random moments of training, resumed each
time, ends bitwise equal to an uninterrupted run; a truncated or corrupted latest checkpoint is
stepped back from to the newest one that restores (single runs and ensembles); a rerun with
another config is refused and leaves the run unchanged.
A torn last line of metrics.jsonl is dropped on resume."""

import dataclasses
import json

import pytest
from test_train import assert_params_close, tiny

from experiments.train import train


def _corrupt(ckpt_dir):
    files = [p for p in ckpt_dir.rglob("*") if p.is_file()]
    assert files
    for p in files:  # what a kill during the write or a full disk leaves: cut-off files
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])


def test_a_corrupted_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    full = tiny(tmp_path, "full", steps=5, ckpt_every=2, log_every=1)
    run = dataclasses.replace(full, out=str(tmp_path / "run"))
    m_full, _ = train(full)
    train(run, stop_at=4)  # checkpoints 2 and 4
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["2", "4"]
    _corrupt(ckpts / "4")
    m, _ = train(run)  # resumes from 2, with a warning; the broken one is kept aside
    err = capsys.readouterr().err
    assert "checkpoint 4 does not restore" in err and "resuming from checkpoint 2" in err
    assert (tmp_path / "run" / "checkpoints_unreadable" / "4").is_dir()
    assert_params_close(m, m_full, rtol=0.0)  # steps 3-5 again, as the uninterrupted run
    steps = [json.loads(x)["step"] for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    full = tiny(tmp_path, "full", steps=5, ckpt_every=2, log_every=1)
    run = dataclasses.replace(full, out=str(tmp_path / "run"))
    m_full, _ = train(full)
    train(run, stop_at=3)  # checkpoint 2, metrics of steps 1-3
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.69')  # a kill during the write of step 4's line
    m, _ = train(run)
    assert_params_close(m, m_full, rtol=0.0)
    steps = [json.loads(x)["step"] for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]


def test_no_checkpoint_restores(tmp_path):
    run = tiny(tmp_path, "run", steps=4, ckpt_every=2, log_every=1)
    train(run, stop_at=3)  # checkpoint 2
    for p in (tmp_path / "run" / "checkpoints").iterdir():
        if p.name.isdigit():
            _corrupt(p)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="no checkpoint restores"):
        train(run)
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before  # nothing moved or written


def test_another_config_in_the_same_directory_is_refused(tmp_path):
    run = tiny(tmp_path, "run", steps=2, ckpt_every=2, log_every=1)
    train(run)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    for kw, words in ((dict(seed=5, lr=0.05), "lr 0.001 -> 0.05, seed 0 -> 5"),
                      (dict(d_model=32), "d_model 16 -> 32")):
        with pytest.raises(ValueError, match="holds a run with another config") as e:
            train(dataclasses.replace(run, **kw))
        assert words in str(e.value)
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing moved
    train(run)  # the same config: resumes (here: finished, nothing to do)
    train(dataclasses.replace(run, progress=not run.progress))  # display only: accepted


def test_an_ensemble_steps_back_past_one_seeds_corrupted_checkpoint(tmp_path, capsys):
    from test_ensemble import rel
    from test_ensemble import tiny as tiny_ens

    cfg = tiny_ens(tmp_path, "k", steps=6, ckpt_every=2, log_every=1, seeds=(0, 1))
    train(cfg, stop_at=4)  # every seed has checkpoints 2 and 4
    _corrupt(tmp_path / "k" / "seed_1" / "checkpoints" / "4")
    models, _ = train(cfg)  # both seeds resume from 2
    assert "seed_1: checkpoint 4 does not restore" in capsys.readouterr().err
    assert (tmp_path / "k" / "seed_1" / "checkpoints_unreadable" / "4").is_dir()
    ref, _ = train(dataclasses.replace(cfg, out=str(tmp_path / "ref")))
    for a, b in zip(models, ref):
        assert rel(a, b) < 1e-6


def test_kill_9_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    """The training CLI killed with SIGKILL at random moments of its training (steps, checkpoint
    writes or metrics writes: wherever it is) and rerun each time ends with the same parameters,
    bitwise, as a run never interrupted."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from experiments.train import parse_args

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")

    def argv(out):
        return ["--task", "parity", "--model", "diagonal", "--preset", "tiny", "--steps", "400",
                "--ckpt-every", "7", "--log-every", "3", "--implementation", "sequential",
                "--out", str(out)]

    def start(out):
        return subprocess.Popen([sys.executable, "-m", "experiments.train", *argv(out)],
                                env=env, cwd=root, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    ref, run = tmp_path / "ref", tmp_path / "run"
    p = start(ref)
    rng = random.Random(0)
    m = run / "metrics.jsonl"
    lines = lambda: len(m.read_text().splitlines()) if m.exists() else 0
    logged = []  # metrics lines on disk at each kill
    for _ in range(3):  # SIGKILL a few logged steps after the resumed run got going
        q = start(run)
        target = lines() + rng.randint(2, 12)
        t0 = time.time()
        while q.poll() is None and lines() < target and time.time() - t0 < 300:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))  # wherever it is then: a step, a save, a log write
        if q.poll() is None:
            os.kill(q.pid, signal.SIGKILL)
            logged.append(lines())
        q.wait()
    q = start(run)  # the last rerun finishes
    assert q.wait(timeout=600) == 0, q.stderr.read().decode()[-2000:]
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    # every kill landed mid-training (some steps logged, not all of them)
    assert len(logged) == 3 and all(0 < n < 400 // 3 for n in logged), logged
    m_ref, _ = train(parse_args(argv(ref)))  # finished: restored, not trained again
    m_run, _ = train(parse_args(argv(run)))
    assert_params_close(m_run, m_ref, rtol=0.0)
    steps = [json.loads(x)["step"] for x in open(run / "metrics.jsonl")]
    assert steps == [json.loads(x)["step"] for x in open(ref / "metrics.jsonl")]
