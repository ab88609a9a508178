"""The training stack: resumption, data parallelism, the CLIs and their error messages."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from experiments.common.mesh import parse_mesh
from experiments.configs import Config, apply_preset, model_config
from experiments.train import parse_args, train


def tiny(tmp_path, name, **kw) -> Config:
    cfg = apply_preset(Config(task="parity", model="diagonal"), "tiny")
    return dataclasses.replace(cfg, out=str(tmp_path / name), implementation="sequential", **kw)


def params_of(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def assert_params_close(a, b, rtol):
    la, lb = params_of(a), params_of(b)
    assert len(la) == len(lb)
    num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(la, lb))
    den = sum(float(np.sum(np.asarray(y) ** 2)) for y in lb)
    assert np.sqrt(num / den) <= rtol, np.sqrt(num / den)


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    full = tiny(tmp_path, "full", steps=5, ckpt_every=2, log_every=1)
    killed = dataclasses.replace(full, out=str(tmp_path / "killed"))
    m_full, _ = train(full)
    train(killed, stop_at=3)  # killed after step 3; the last checkpoint is step 2
    steps = [json.loads(x)["step"] for x in open(tmp_path / "killed" / "metrics.jsonl")]
    assert steps == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["2"]
    m_resumed, _ = train(killed)  # the same command again resumes from step 2
    assert_params_close(m_resumed, m_full, rtol=0.0)
    steps = [json.loads(x)["step"] for x in open(tmp_path / "killed" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]
    # a finished run is not trained again
    m_again, _ = train(killed)
    assert_params_close(m_again, m_full, rtol=0.0)


def test_data_parallel_matches_single_device(tmp_path):
    assert jax.device_count() >= 4
    one = tiny(tmp_path, "one", steps=3, ckpt_every=3)
    four = dataclasses.replace(one, out=str(tmp_path / "four"), mesh="data=4")
    m1, _ = train(one)
    m4, _ = train(four)
    assert_params_close(m4, m1, rtol=1e-5)
    p4 = params_of(m4)[0]
    assert len(p4.sharding.device_set) == 4  # replicated over the mesh
    with pytest.raises(ValueError, match="divisible"):
        train(dataclasses.replace(four, batch=6))


def test_mesh_spec_parsing():
    assert parse_mesh("") == {}
    assert parse_mesh("data=4") == {"data": 4}
    assert parse_mesh("data=2,seq=4") == {"data": 2, "seq": 4}
    assert parse_mesh("data=-1") == {"data": jax.device_count()}
    for bad in ("model=2", "data", "data=x", "data=2,data=2", "data=1000"):
        with pytest.raises(ValueError, match="mesh spec"):
            parse_mesh(bad)
    # [parallel] seq meshes train now (tests/test_parallel_train.py); image tasks cannot split time
    with pytest.raises(ValueError, match="token task"):
        train(apply_preset(Config(out="/tmp/lrnn_never", task="arrow_pointing", model="plstm",
                                  mesh="data=1,seq=2"), "tiny"))


def test_cli_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "cli"
    train_cli.main(["--task", "parity", "--model", "diagonal", "--eigen", "unit", "--n-h", "1",
                    "--layers", "1", "--preset", "tiny", "--implementation", "sequential",
                    "--out", str(out)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["eigen"] == "unit" and cfg["layers"] == 1 and cfg["preset"] == "tiny"
    for name in ("metrics.jsonl", "eval.json", "eval.png"):
        assert (out / name).exists(), name
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(rec) == {"step", "loss", "accuracy", "lr", "seconds"} and rec["step"] == 4
    ev = json.loads((out / "eval.json").read_text())
    assert ev == printed
    assert ev["lengths"] == [13, 14, 15, 16] and len(ev["accuracy"]) == 4
    assert ev["scaled_accuracy"] == pytest.approx((ev["mean_accuracy"] - 0.5) / 0.5, abs=1e-5)

    assert ev["sequences_per_length"] == 4 and ev["sequences"] == 16
    lo, hi = ev["accuracy_ci"]
    assert all(a <= x <= b for a, x, b in zip(lo, ev["accuracy"], hi))
    res = evaluate_cli.main([str(out), "--lengths", "20,21"])
    printed = json.loads(capsys.readouterr().out.strip())
    assert printed == res and res["lengths"] == [20, 21]
    assert set(res) == set(ev)
    assert res["sequences_per_length"] == 256  # at least 256 per length unless asked
    # the test lengths again give exactly eval.json
    assert evaluate_cli.main([str(out), "--lengths", "13,14,15,16", "--per-length", "4"]) == ev
    with pytest.raises(SystemExit):
        evaluate_cli.main([str(tmp_path / "nothing")])


def test_cli_flags_and_unknown_names(capsys):
    cfg = parse_args(["--task", "parity", "--model", "deltaproduct", "--n-h", "3", "--eigen",
                      "unit", "--preset", "cpu", "--out", "x", "--steps", "7"])
    assert (cfg.n_h, cfg.eigen, cfg.steps, cfg.preset) == (3, "unit", 7, "cpu")
    assert model_config(cfg).mixer == "deltaproduct" and model_config(cfg).n_h == 3
    paper = parse_args(["--model", "deltanet", "--preset", "paper", "--out", "x"])
    assert (paper.d_model, paper.batch, paper.steps, paper.lr) == (128, 256, 20000, 1e-3)
    for argv, msg in [
        (["--task", "parrity"], "valid tasks: .*modular_arithmetic"),
        (["--model", "mamba7"], "valid models: .*deltanet"),
        (["--preset", "gpu9"], "valid presets: cpu, gpu, paper"),
        (["--preset", "gpu"], "arrow_pointing task only"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_args(argv + ["--out", "x"])
        with pytest.raises(SystemExit) as e:  # one "error: ..." line on stderr, status 2
            train_cli.main(argv + ["--out", "x"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error: " in err[0] and re.search(msg, err[0]), err
