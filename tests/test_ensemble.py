"""Seed ensembles (one vmapped model, one run directory per seed) against single runs, and the
training options of the published protocols: a fixed training set, early stopping, the
auxiliary short-word batch, dropout, the SLiCE regulariser, weight-decay exemptions."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.configs import Config, apply_preset
from experiments.train import Setup, make_task, run, train, train_batch


def tiny(tmp_path, name, task="parity", model="deltanet", **kw) -> Config:
    cfg = apply_preset(Config(task=task, model=model), "tiny")
    return dataclasses.replace(cfg, out=str(tmp_path / name), implementation="chunked", **kw)


def rel(a, b) -> float:
    la = jax.tree.leaves(nnx.state(a, nnx.Param))
    lb = jax.tree.leaves(nnx.state(b, nnx.Param))
    num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(la, lb))
    return float(np.sqrt(num / sum(float(np.sum(np.asarray(y) ** 2)) for y in lb)))


def test_ensemble_equals_single_runs_and_resumes(tmp_path):
    base = tiny(tmp_path, "x", steps=5, ckpt_every=2, log_every=1, weight_decay=0.1,
                no_decay=("embed",))
    ens = dataclasses.replace(base, out=str(tmp_path / "ens"), seeds=(3, 0))
    train(ens, stop_at=3)  # killed after step 3; every seed's last checkpoint is step 2
    summaries = run(ens)  # resumes
    singles = {s: dataclasses.replace(base, seed=s, out=str(tmp_path / f"single{s}"))
               for s in (3, 0)}
    for i, (s, cfg) in enumerate(singles.items()):
        single = run(cfg)
        d = tmp_path / "ens" / f"seed_{s}"
        conf = json.loads((d / "config.json").read_text())
        assert conf["seed"] == s and conf["seeds"] == [] and conf["out"] == str(d)
        for name in ("metrics.jsonl", "eval.json", "eval.png", "checkpoints"):
            assert (d / name).exists(), name
        steps = [json.loads(x)["step"] for x in open(d / "metrics.jsonl")]
        assert steps == [1, 2, 3, 4, 5]
        ev = json.loads((d / "eval.json").read_text())
        assert ev == summaries[i]
        assert set(ev) == set(single) and ev["lengths"] == single["lengths"]
        a, b = [json.loads(x) for x in open(d / "metrics.jsonl")], \
            [json.loads(x) for x in open(tmp_path / f"single{s}" / "metrics.jsonl")]
        np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    models, _ = train(ens)  # finished: restored, not trained again
    for cfg, m in zip(singles.values(), models):
        m1, _ = train(cfg)
        assert rel(m, m1) < 1e-5


def test_ensemble_killed_between_seed_saves_resumes(tmp_path):
    cfg = tiny(tmp_path, "k", steps=6, ckpt_every=2, log_every=1, seeds=(0, 1))
    train(cfg, stop_at=4)
    # a kill between the seeds' saves of step 4: seed 1 lacks it
    ck = tmp_path / "k" / "seed_1" / "checkpoints"
    import shutil

    shutil.rmtree(ck / "4")
    models, _ = train(cfg)  # resumes from step 2, the newest step both have
    ref, _ = train(dataclasses.replace(cfg, out=str(tmp_path / "ref")))
    for a, b in zip(models, ref):
        assert rel(a, b) < 1e-6
    # a seed added to a trained ensemble is refused, nothing is retrained
    more = dataclasses.replace(cfg, seeds=(0, 1, 2))
    with pytest.raises(ValueError, match="no checkpoint step in common"):
        train(more)
    assert not (tmp_path / "k" / "seed_2").exists()  # refused before anything was written
    steps = [json.loads(x)["step"] for x in open(tmp_path / "k" / "seed_0" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_early_stop_on_a_checkpoint_step(tmp_path):
    # validation, early stop and a periodic checkpoint at the same step save once
    cfg = tiny(tmp_path, "es", steps=6, val_every=2, val_size=8, early_stop=1e-9,
               log_every=2, ckpt_every=2, seeds=(0, 1))
    train(cfg)
    for s in (0, 1):
        recs = [json.loads(x) for x in open(tmp_path / "es" / f"seed_{s}" / "metrics.jsonl")]
        assert recs[-1]["step"] == 2 and recs[-1]["early_stop"] is True


def test_ensemble_rejects_repeated_seeds_and_meshes(tmp_path):
    with pytest.raises(ValueError, match="repeated seeds"):
        train(tiny(tmp_path, "a", seeds=(1, 1)))
    with pytest.raises(ValueError, match="drop --mesh"):
        train(tiny(tmp_path, "b", seeds=(1, 2), mesh="data=2"))
    with pytest.raises(ValueError, match="divisible by heads=3"):
        train(tiny(tmp_path, "c", heads=3))  # fails building the model: nothing written
    for name in "abc":
        assert not (tmp_path / name).exists()


def test_fixed_training_set_is_visited_in_epochs(tmp_path):
    cfg = tiny(tmp_path, "pool", batch=8, train_samples=8)
    task = make_task(cfg)
    key = jax.random.key(1)
    rows = [{tuple(r) for r in np.asarray(train_batch(cfg, task, key, i)[0]).tolist()}
            for i in range(3)]
    assert rows[0] == rows[1] == rows[2]  # the same 8 sequences, once per epoch
    firsts = [np.asarray(train_batch(cfg, task, key, i)[0])[0].tolist() for i in range(3)]
    assert len({tuple(f) for f in firsts}) > 1  # in a new order
    with pytest.raises(ValueError, match="train-samples"):
        train(dataclasses.replace(cfg, train_samples=4))


def test_early_stopping_and_resume_after_it(tmp_path):
    cfg = tiny(tmp_path, "es", steps=8, val_every=2, val_size=16, early_stop=1e-9,
               log_every=4, ckpt_every=8)
    train(cfg)
    recs = [json.loads(x) for x in open(tmp_path / "es" / "metrics.jsonl")]
    assert recs[-1]["step"] == 2 and recs[-1]["early_stop"] is True
    assert 0.0 <= recs[-1]["val_accuracy"] <= 1.0
    train(cfg)  # a rerun does not train on
    assert [json.loads(x) for x in open(tmp_path / "es" / "metrics.jsonl")] == recs
    with pytest.raises(ValueError, match="val-every"):
        train(dataclasses.replace(cfg, val_every=0, out=str(tmp_path / "es2")))


def test_slice_a5_protocol_options_train(tmp_path):
    # the aux batch of length-2 words, the held-out split, dropout, the regulariser and the
    # embedding's weight-decay exemption, on a tiny model
    cfg = apply_preset(Config(task="a5", model="slice"), "slice")
    small = dict(d_model=8, slice_inputs=4, block_size=4, layers=1, steps=3, warmup=1,
                 batch=4, aux_batch=2, length=5, val_every=3, val_size=8, eval_per_length=8,
                 log_every=1, ckpt_every=3, progress=False, implementation="chunked")
    cfg = dataclasses.replace(cfg, out=str(tmp_path / "a5"), **small)
    assert (cfg.holdout, cfg.dropout, cfg.slice_reg, cfg.no_decay) == (0.2, 0.1, 1e-3,
                                                                      ("embed",))
    rec = run(cfg)
    # words of length 5, scored at every position (SLiCE's validation accuracy)
    assert rec["lengths"] == [1, 2, 3, 4, 5] and rec["sequences"] == 8
    task = make_task(cfg)
    assert task.holdout == 0.2 and task.train_sizes == (5, 5) and task.test_sizes == (1, 5)
    setup = Setup(cfg, task)
    assert setup.layout.decay_mask() == {"decay_float32": True, "nodecay_float32": False}


def test_dropout_changes_training_not_evaluation(tmp_path):
    a, _ = train(tiny(tmp_path, "d0", steps=2))
    b, _ = train(tiny(tmp_path, "d1", steps=2, dropout=0.5))
    assert rel(a, b) > 0  # trained differently
    x = jax.numpy.zeros((2, 5), jax.numpy.int32)
    np.testing.assert_array_equal(np.asarray(b(x)), np.asarray(b(x)))  # no dropout here
