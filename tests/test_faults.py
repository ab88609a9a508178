"""Faults a long run meets (issue [runs]; so far: a truncated or corrupted latest checkpoint,
which a resume steps back from to the newest one that restores)."""

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
    assert "checkpoint 4 does not restore" in err and "trying the one before" in err
    assert (tmp_path / "run" / "checkpoints_unreadable" / "4").is_dir()
    assert_params_close(m, m_full, rtol=0.0)  # steps 3-5 again, as the uninterrupted run
    steps = [json.loads(x)["step"] for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]


def test_no_checkpoint_restores(tmp_path):
    run = tiny(tmp_path, "run", steps=4, ckpt_every=2, log_every=1)
    train(run, stop_at=3)  # checkpoint 2
    for p in (tmp_path / "run" / "checkpoints").iterdir():
        if p.name.isdigit():
            _corrupt(p)
    with pytest.raises(ValueError, match="no checkpoint restores"):
        train(run)


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
