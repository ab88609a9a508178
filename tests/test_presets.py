"""The published protocols as presets: what each sets, and the task and format it builds."""

import dataclasses

import pytest

from experiments.configs import Config, apply_preset, is_group_task
from experiments.tasks.grazzi import GrazziModularArithmetic, GrazziParity
from experiments.tasks.groups import GroupWordProblem
from experiments.train import make_task, parse_args


def preset(task, model, name):
    return apply_preset(Config(task=task, model=model), name)


def test_deltaproduct_protocol_on_group_tasks():
    for task in ("s3", "s5", "a5", "z60"):
        assert is_group_task(task)
        c = preset(task, "deltaproduct", "paper")
        got = (c.layers, c.d_model, c.heads, c.head_dim, c.conv, c.forget_gate, c.out_gate,
               c.mlp_ratio, c.batch, c.steps, c.lr, c.warmup, c.end_lr_ratio, c.weight_decay,
               c.clip, c.train_min, c.train_max, c.test_max, c.train_samples,
               c.eval_per_length)
        assert got == (1, 128, 8, 32, 0, False, False, 4, 2048, 4900, 1e-3, 0, 0.0, 1e-6, 0.0,
                       128, 128, 512, 99_000, 1000)
        t = make_task(c)
        assert isinstance(t, GroupWordProblem) and t.eval_sizes() == list(range(1, 513))


def test_grazzi_protocol_uses_their_format():
    c = preset("parity", "deltanet", "paper")
    assert (c.task_format, c.layers, c.d_model, c.heads, c.conv, c.mlp_ratio, c.out_gate,
            c.batch, c.steps, c.warmup, c.weight_decay, c.clip) == (
        "grazzi", 2, 128, 4, 4, 4, False, 256, 20_000, 2_000, 0.0, 0.0)
    assert isinstance(make_task(c), GrazziParity)
    c = preset("modular_arithmetic", "diagonal", "paper")
    assert (c.steps, c.warmup, c.weight_decay, c.d_state, c.expand, c.conv, c.mlp_ratio,
            c.no_decay) == (100_000, 10_000, 0.1, 16, 2, 1, 0, ("A_log", "skip"))
    assert isinstance(make_task(c), GrazziModularArithmetic)
    # the lrnn format stays available under its name
    c = parse_args(["--task", "parity", "--model", "deltanet", "--preset", "paper",
                    "--task-format", "lrnn", "--out", "x"])
    assert c.task_format == "lrnn" and type(make_task(c)).__name__ == "Parity"


def test_slice_protocols():
    c = preset("cycle_navigation", "slice", "slice")
    assert (c.layers, c.d_model, c.structure, c.block_size, c.slice_inputs, c.slice_drive,
            c.lr, c.batch, c.steps, c.warmup, c.weight_decay, c.no_decay, c.dropout, c.slice_reg,
            c.val_every, c.val_size, c.early_stop) == (
        2, 128, "block_diagonal", 4, 128, "linear", 2e-3, 256, 100_000, 10_000, 1e-2,
        ("embed",), 0.01, 1e-3, 5000, 8192, 0.9995)
    assert c.end_lr_ratio * c.lr == pytest.approx(1e-5)  # cosine to 1e-5
    a5 = preset("a5", "slice", "slice")
    assert (a5.layers, a5.block_size, a5.length, a5.holdout, a5.aux_batch, a5.aux_length,
            a5.dropout, a5.early_stop) == (1, 8, 20, 0.2, 25, 2, 0.1, 0.999)
    assert dataclasses.replace(preset("a5", "slice", "paper"), preset="slice") == a5
    # a diagonal model under SLiCE's A5 protocol (the comparison the paper draws)
    d = preset("a5", "diagonal", "slice")
    assert (d.holdout, d.aux_batch, d.d_state) == (0.2, 25, 16)
    with pytest.raises(ValueError, match="preset 'slice' is defined for"):
        preset("modular_arithmetic_brackets", "slice", "slice")


def test_cli_seeds_and_cpu_group_preset():
    c = parse_args(["--task", "s3", "--model", "deltaproduct", "--n-h", "2", "--preset", "cpu",
                    "--seeds", "0", "1", "2", "--out", "x"])
    assert c.seeds == (0, 1, 2) and c.n_h == 2 and c.layers == 1
    assert (c.train_min, c.train_max, c.test_max, c.d_model) == (8, 8, 64, 64)
