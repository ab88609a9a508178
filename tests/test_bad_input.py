"""Bad inputs and the errors they get (issue [runs], items 5, 6, 7 and 10): every public op,
scan, transition, layer constructor and CLI named in one table, each with the exception type
and the words its message must contain; each message names the argument, and the op checks run
at trace time (under ``jax.jit`` too). A CLI ends a user error with one ``error: ...`` line on
stderr and exit status 2, no traceback; ``evaluate`` creates nothing in a run it only reads and
refuses a length whose batch of one sequence would not fit in memory instead of allocating it.
The layers' hyper-parameters are checked once, when a ``lrnn.nn.ModelConfig`` is made.
"""

import contextlib
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrnn import DENSE, DIAGONAL, Affine, BlockDiagonal, grid, ops, scan, scan_sequential
from lrnn import nn as lnn
from lrnn import transitions as tr


def z(*shape):
    return jnp.zeros(shape, jnp.float32)


@pytest.mark.parametrize("call, err, words", [
    (lambda: ops.linear_recurrence(None, z(2, 3, 4)), TypeError, "a must be an array, got None"),
    (lambda: ops.delta_rule(None, z(2, 3, 2, 4), z(2, 3, 2, 4), z(2, 3, 2)), TypeError,
     "q must be an array, got None"),
    (lambda: ops.delta_rule(z(2, 3, 2, 16), z(2, 3, 2, 8), z(2, 3, 2, 16), z(2, 3, 2)),
     ValueError, "q and k must share the key size dk: q (2, 3, 2, 16) has dk = 16, k has "
     "dk = 8"),
    (lambda: scan(DIAGONAL, Affine(z(2, 3, 4), z(2, 3, 4)), axis=1, reverse="no"), TypeError,
     "scan: reverse must be a bool"),
    (lambda: scan_sequential(DIAGONAL, Affine(z(2, 3, 4), z(2, 3, 4)), axis=1, reverse=1),
     TypeError, "scan_sequential: reverse must be a bool"),
    (lambda: tr.sparse(jnp.ones((3, 4, 4)), np.eye(4) * 0.5), ValueError,
     "mask must be booleans or 0/1"),
    (lambda: tr.sparse(jnp.ones((3, 4, 4)), np.array([["a"] * 4] * 4)), TypeError,
     "mask must be an array of booleans or 0/1"),
    (lambda: tr.hadamard_matrix(4.0), TypeError, "Walsh-Hadamard size must be an int"),
    (lambda: tr.hadamard_matrix(6), ValueError, "must be a power of two, got n = 6"),
])
def test_message_names_the_argument(call, err, words):
    with pytest.raises(err) as e:
        call()
    assert words in str(e.value)


def test_numpy_integers_and_bools_are_accepted():
    a, b = jnp.full((2, 5, 3), 0.5), jnp.ones((2, 5, 3))
    want = ops.linear_recurrence(a, b, implementation="sequential")
    got = ops.linear_recurrence(a, b, implementation="chunked", chunk_size=np.int64(2))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    assert tr.hadamard_matrix(np.int64(4)).shape == (4, 4)
    h = scan(DIAGONAL, Affine(a, b), axis=1, reverse=np.bool_(True))
    assert h.shape == (2, 5, 3)
    # a mask of 0/1 numbers is a pattern; traced masks are not checked (no values yet)
    v = jnp.ones((3, 4, 4))
    np.testing.assert_array_equal(np.asarray(tr.sparse(v, np.eye(4))),
                                  np.asarray(tr.sparse(v, np.eye(4, dtype=bool))))
    assert jax.jit(tr.sparse)(v, jnp.eye(4)).shape == (3, 4, 4)


@pytest.mark.parametrize("kw, words", [
    (dict(implementation="foo"), "--implementation must be one of"),
    (dict(chunk_size=0), "--chunk-size must be a positive integer"),
    (dict(mesh="foo"), "mesh spec 'foo'"),
    (dict(eigen="x"), "eigen must be 'unit' or 'signed'"),
    # item 2 of the [runs] issue
    (dict(keep_checkpoints=0), "--keep-checkpoints must be a positive integer"),
    (dict(ckpt_every=0), "--ckpt-every must be a positive integer"),
    (dict(log_every=0), "--log-every must be a positive integer"),
    (dict(batch=0), "--batch must be a positive integer"),
    (dict(steps=0), "--steps must be a positive integer"),
    (dict(steps=-3), "--steps must be a positive integer"),
    (dict(train_min=20, train_max=5), "lengths must satisfy 1 <= min <= max"),
])
def test_bad_training_flags_write_nothing(tmp_path, kw, words):
    import dataclasses

    from test_train import tiny

    from experiments.train import train

    cfg = dataclasses.replace(tiny(tmp_path, "run", steps=2), **kw)
    with pytest.raises(ValueError) as e:
        train(cfg)
    assert words in str(e.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, words", [
    (["--lengths", "8,-4"], "--lengths: expected a positive integer, got -4"),
    (["--dtypes", "float8"], "--dtypes: float8: expected comma-separated names"),
    (["--dk", "0"], "--dk: expected a positive integer, got 0"),
    (["--implementations", "fused"], "--implementations: fused"),
])
def test_numerics_cli_errors_are_one_line(argv, words, capsys):
    # item 7 of the [runs] issue, for `python -m lrnn.numerics`
    from lrnn import numerics

    with pytest.raises(SystemExit) as e:
        numerics.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1] and "error:" in err[-1] and "Traceback" not in "\n".join(err)


# ------------------------------------------------------------------------------------------
# The table: (id, callable, exception type, words its message must contain)
# ------------------------------------------------------------------------------------------
B, T, H, DK, DV, NH = 2, 5, 2, 4, 3, 2


def o(*shape):
    return jnp.ones(shape, jnp.float32)


def i32(*shape):
    return jnp.zeros(shape, jnp.int32)


Q, K, V = z(B, T, H, DK), o(B, T, H, DK) / 2, z(B, T, H, DV)
G, BETA = o(B, T, H) / 2, o(B, T, H) / 2
KP, VP, BP = o(B, T, H, NH, DK) / 2, z(B, T, H, NH, DV), o(B, T, H, NH) / 2
A_LR, B_LR = o(B, T, DK) / 2, z(B, T, DK)
U, DELTA, A_SS, BM, CM = z(B, T, DK), o(B, T, DK) / 10, -o(DK, DV), z(B, T, DV), z(B, T, DV)
X_SR, W_SR, B_SR = z(B, T, 3), z(3, DK), z(B, T, DK)
ELEMS = Affine(z(2, 3, 4), z(2, 3, 4))
LR, GLA, DR, DP = (ops.linear_recurrence, ops.gated_linear_attention, ops.delta_rule,
                   ops.delta_product)
SS, SR = ops.selective_scan, ops.structured_recurrence
IMPLS = "implementation must be one of ('auto', 'sequential', 'scan', 'chunked', 'pallas')"


def _plstm(q=None, gates=None, **kw):
    q = z(1, 2, 3, 1, 4) if q is None else q
    n = len(grid.PLSTMGates._fields)
    gates = grid.PLSTMGates(*[o(1, 2, 3, 1)] * n) if gates is None else gates
    return grid.plstm2d(q, z(1, 2, 3, 1, 4), z(1, 2, 3, 1, 2), gates, **kw)


def _mixer(**kw):
    cfg = lnn.ModelConfig(**{"d_model": 16, "heads": 2, "layers": 1, **kw})
    return lnn.make_mixer(cfg, rngs=nnx.Rngs(0))


def _model(vocab_size=5, num_classes=3, **kw):
    cfg = lnn.ModelConfig(**{"d_model": 16, "heads": 2, "layers": 1, **kw})
    return lnn.SequenceModel(cfg, vocab_size, num_classes, rngs=nnx.Rngs(0))


OPS = [
    # linear_recurrence: a, b [B, T, D], h0 [B, D]
    ("lr/a wrong rank", lambda: LR(o(B, T), B_LR), ValueError,
     "linear_recurrence: a must have shape [B, T, D]"),
    ("lr/b mismatched D", lambda: LR(A_LR, z(B, T, DK + 1)), ValueError,
     "linear_recurrence: b must have shape [B, T, D] like a"),
    ("lr/b mismatched B", lambda: LR(A_LR, z(B + 1, T, DK)), ValueError,
     "b must have shape [B, T, D] like a (2, 5, 4)"),
    ("lr/int a", lambda: LR(i32(B, T, DK), B_LR), TypeError,
     "a must be a floating-point array, got dtype int32"),
    ("lr/None b", lambda: LR(A_LR, None), TypeError, "b must be an array, got None"),
    ("lr/h0 shape", lambda: LR(A_LR, B_LR, z(B, DK + 1)), ValueError, "h0 must have shape [B, D]"),
    ("lr/chunk_size 0", lambda: LR(A_LR, B_LR, implementation="chunked", chunk_size=0),
     ValueError, "chunk_size must be a positive int, got 0"),
    ("lr/chunk_size negative", lambda: LR(A_LR, B_LR, implementation="chunked", chunk_size=-2),
     ValueError, "chunk_size must be a positive int, got -2"),
    ("lr/chunk_size float", lambda: LR(A_LR, B_LR, implementation="chunked", chunk_size=2.5),
     ValueError, "chunk_size must be a positive int, got 2.5"),
    ("lr/chunk_size bool", lambda: LR(A_LR, B_LR, chunk_size=True), ValueError,
     "chunk_size must be a positive int, got True"),
    ("lr/unknown implementation", lambda: LR(A_LR, B_LR, implementation="fused"), ValueError,
     IMPLS),
    ("lr/chunk_combine", lambda: LR(A_LR, B_LR, chunk_combine="tree"), ValueError,
     "chunk_combine must be one of ('loop', 'scan')"),
    ("lr/exchange", lambda: LR(A_LR, B_LR, exchange="bcast"), ValueError,
     "linear_recurrence: exchange must be one of ('all_gather', 'ppermute'), got 'bcast'"),
    ("lr/axis_name not a str", lambda: LR(A_LR, B_LR, axis_name=3), TypeError,
     "linear_recurrence: axis_name must be the name (str) of the mesh axis"),
    ("lr/axis_name a tuple", lambda: LR(A_LR, B_LR, axis_name=("seq",)), TypeError,
     "axis_name must be the name (str) of the mesh axis the time axis is split over, got "
     "('seq',)"),
    ("lr_step/h shape", lambda: ops.linear_recurrence_step(z(B, DK), z(B, DK), z(B, DK + 1)),
     ValueError, "linear_recurrence_step: h must have shape [B, D]"),
    ("lr_summary/chunk_size", lambda: ops.linear_recurrence_summary(A_LR, B_LR, chunk_size=0),
     ValueError, "linear_recurrence_summary: chunk_size must be a positive int"),
    # gated_linear_attention: q, k [B, T, H, dk], v [B, T, H, dv], gate [B, T, H(, dk)]
    ("gla/q wrong rank", lambda: GLA(z(B, T, DK), K, V, G), ValueError,
     "gated_linear_attention: q must have shape [B, T, H, dk]"),
    ("gla/k mismatched dk", lambda: GLA(Q, o(B, T, H, DK + 1), V, G), ValueError,
     "q must have shape [B, T, H, dk] like k"),
    ("gla/v mismatched T", lambda: GLA(Q, K, z(B, T + 1, H, DV), G), ValueError,
     "v must have shape [B, T, H, dv] = (2, 5, 2, '?'), got (2, 6, 2, 3)"),
    ("gla/v mismatched B", lambda: GLA(Q, K, z(B + 1, T, H, DV), G), ValueError,
     "v must have shape [B, T, H, dv]"),
    ("gla/v mismatched H", lambda: GLA(Q, K, z(B, T, H + 1, DV), G), ValueError,
     "got (2, 5, 3, 3)"),
    ("gla/gate shape", lambda: GLA(Q, K, V, o(B, T)), ValueError,
     "gate must have shape [B, T, H] or [B, T, H, dk]"),
    ("gla/gate per key dk", lambda: GLA(Q, K, V, o(B, T, H, DK + 1)), ValueError,
     "gate must have shape"),
    ("gla/int q", lambda: GLA(i32(B, T, H, DK), K, V, G), TypeError,
     "q must be a floating-point array"),
    ("gla/None gate", lambda: GLA(Q, K, V, None), TypeError, "gate must be an array, got None"),
    ("gla/initial_state shape", lambda: GLA(Q, K, V, G, initial_state=z(B, H, DV, DK)),
     ValueError, "initial_state must have shape [B, H, dk, dv] = (2, 2, 4, 3)"),
    ("gla/scale not a number", lambda: GLA(Q, K, V, G, scale="x"), TypeError,
     "scale must be a Python float or a scalar"),
    ("gla/chunk_size 0", lambda: GLA(Q, K, V, G, implementation="chunked", chunk_size=0),
     ValueError, "gated_linear_attention: chunk_size must be a positive int"),
    ("gla/unknown implementation", lambda: GLA(Q, K, V, G, implementation="fused"), ValueError,
     IMPLS),
    ("gla/exchange", lambda: GLA(Q, K, V, G, exchange="bcast"), ValueError,
     "gated_linear_attention: exchange must be one of ('all_gather', 'ppermute')"),
    ("gla/axis_name not a str", lambda: GLA(Q, K, V, G, axis_name=3), TypeError,
     "gated_linear_attention: axis_name must be the name (str) of the mesh axis"),
    ("gla_step/state shape", lambda: ops.gated_linear_attention_step(
        z(B, H, DK), z(B, H, DK), z(B, H, DV), o(B, H), state=z(B, H, DK, DV + 1)), ValueError,
     "gated_linear_attention_step: state must have shape [B, H, dk, dv]"),
    ("gla_step/sequence given", lambda: ops.gated_linear_attention_step(Q, K, V, G), ValueError,
     "k must have shape [B, H, dk]"),
    ("gla_summary/chunk_size", lambda: ops.gla_summary(K, V, G, chunk_size=0), ValueError,
     "gla_summary: chunk_size must be a positive int"),
    # delta_rule: beta [B, T, H], gate [B, T, H] or None
    ("delta_rule/beta shape", lambda: DR(Q, K, V, o(B, T)), ValueError,
     "delta_rule: beta must have shape [B, T, H]"),
    ("delta_rule/beta H", lambda: DR(Q, K, V, o(B, T, H + 1)), ValueError, "got (2, 5, 3)"),
    ("delta_rule/gate per key", lambda: DR(Q, K, V, BETA, gate=o(B, T, H, DK)), ValueError,
     "gate must have shape [B, T, H] (per head) or None"),
    ("delta_rule/q k dk", lambda: DR(z(B, T, H, DK + 1), K, V, BETA), ValueError,
     "q and k must share the key size dk"),
    ("delta_rule/int beta", lambda: DR(Q, K, V, i32(B, T, H)), TypeError,
     "beta must be a floating-point array"),
    ("delta_rule/None beta", lambda: DR(Q, K, V, None), TypeError, "beta must be an array"),
    ("delta_rule/initial_state", lambda: DR(Q, K, V, BETA, initial_state=z(B, H, DK)),
     ValueError, "initial_state must have shape [B, H, dk, dv]"),
    ("delta_rule/chunk_size -1", lambda: DR(Q, K, V, BETA, implementation="chunked",
                                            chunk_size=-1), ValueError,
     "delta_rule: chunk_size must be a positive int, got -1"),
    ("delta_rule/unknown implementation", lambda: DR(Q, K, V, BETA, implementation="fast"),
     ValueError, IMPLS),
    ("delta_rule/exchange", lambda: DR(Q, K, V, BETA, exchange="bcast"), ValueError,
     "delta_rule: exchange must be one of ('all_gather', 'ppermute')"),
    ("delta_rule/axis_name not a str", lambda: DR(Q, K, V, BETA, axis_name=3), TypeError,
     "delta_rule: axis_name must be the name (str) of the mesh axis"),
    ("delta_rule_step/state", lambda: ops.delta_rule_step(
        z(B, H, DK), z(B, H, DK), z(B, H, DV), o(B, H), state=z(B, H, DV, DK)), ValueError,
     "delta_rule_step: state must have shape [B, H, dk, dv]"),
    # delta_product: k, v [B, T, H, n_h, d], beta [B, T, H, n_h]
    ("delta_product/k without n_h", lambda: DP(Q, K, VP, BP), ValueError,
     "delta_product: k must have shape [B, T, H, n_h, dk]"),
    ("delta_product/v n_h", lambda: DP(Q, KP, z(B, T, H, NH + 1, DV), BP), ValueError,
     "v must have shape [B, T, H, n_h, dv]"),
    ("delta_product/beta n_h", lambda: DP(Q, KP, VP, o(B, T, H, NH + 1)), ValueError,
     "beta must have shape [B, T, H, n_h]"),
    ("delta_product/q dk", lambda: DP(z(B, T, H, DK + 1), KP, VP, BP), ValueError,
     "q and k must share the key size dk: q (2, 5, 2, 5) has dk = 5, k has dk = 4"),
    ("delta_product/gate per step", lambda: DP(Q, KP, VP, BP, gate=o(B, T, H, NH)), ValueError,
     "gate must have shape [B, T, H] (per head) or None"),
    ("delta_product/int k", lambda: DP(Q, i32(B, T, H, NH, DK), VP, BP), TypeError,
     "k must be a floating-point array"),
    ("delta_product/chunk_size 0", lambda: DP(Q, KP, VP, BP, implementation="chunked",
                                              chunk_size=0), ValueError,
     "delta_product: chunk_size must be a positive int"),
    ("delta_product/exchange", lambda: DP(Q, KP, VP, BP, exchange="bcast"), ValueError,
     "delta_product: exchange must be one of ('all_gather', 'ppermute')"),
    ("delta_product/axis_name not a str", lambda: DP(Q, KP, VP, BP, axis_name=0), TypeError,
     "delta_product: axis_name must be the name (str) of the mesh axis"),
    ("delta_product_step/sequence given", lambda: ops.delta_product_step(Q, KP, VP, BP),
     ValueError, "delta_product_step: k must have shape [B, H, n_h, dk]"),
    ("delta_summary/beta", lambda: ops.delta_summary(KP, VP, o(B, T, H)), ValueError,
     "delta_summary: beta must have shape [B, T, H, n_h]"),
    # selective_scan: u, delta [B, T, D], A [D, N], Bm, Cm [B, T, N], h0 [B, D, N]
    ("selective/A shape", lambda: SS(U, DELTA, -o(DK + 1, DV), BM, CM), ValueError,
     "selective_scan: A must have shape [D, N]"),
    ("selective/Bm N", lambda: SS(U, DELTA, A_SS, z(B, T, DV + 1), CM), ValueError,
     "Bm must have shape [B, T, N]"),
    ("selective/Cm N", lambda: SS(U, DELTA, A_SS, BM, z(B, T, DV + 1)), ValueError,
     "Cm must have shape [B, T, N]"),
    ("selective/delta shape", lambda: SS(U, o(B, T, DK + 1), A_SS, BM, CM), ValueError,
     "delta must have shape [B, T, D] like u"),
    ("selective/h0", lambda: SS(U, DELTA, A_SS, BM, CM, z(B, DK)), ValueError,
     "h0 must have shape [B, D, N]"),
    ("selective/int u", lambda: SS(i32(B, T, DK), DELTA, A_SS, BM, CM), TypeError,
     "u must be a floating-point array"),
    ("selective/chunk_size 0", lambda: SS(U, DELTA, A_SS, BM, CM, implementation="chunked",
                                          chunk_size=0), ValueError,
     "selective_scan: chunk_size must be a positive int"),
    ("selective/signed not a bool", lambda: SS(U, DELTA, A_SS, BM, CM, signed="yes"),
     TypeError, "selective_scan: signed must be a bool, got 'yes'"),
    ("selective/signed an int", lambda: SS(U, DELTA, A_SS, BM, CM, signed=1), TypeError,
     "selective_scan: signed must be a bool, got 1"),
    ("selective/exchange", lambda: SS(U, DELTA, A_SS, BM, CM, exchange="bcast"), ValueError,
     "selective_scan: exchange must be one of ('all_gather', 'ppermute')"),
    ("selective/axis_name not a str", lambda: SS(U, DELTA, A_SS, BM, CM, axis_name=3),
     TypeError, "selective_scan: axis_name must be the name (str) of the mesh axis"),
    ("selective_gates/signed not a bool", lambda: ops.selective_gates(U, DELTA, A_SS, BM,
                                                                      signed="no"),
     TypeError, "selective_gates: signed must be a bool, got 'no'"),
    ("selective_gates/A shape", lambda: ops.selective_gates(U, DELTA, -o(DK + 1, DV), BM),
     ValueError, "selective_gates: A must have shape [D, N] = (4, '?'), got (5, 3)"),
    ("selective_gates/Bm N", lambda: ops.selective_gates(U, DELTA, A_SS, z(B, T, DV + 1)),
     ValueError, "selective_gates: Bm must have shape [..., N] = (2, 5, 3)"),
    ("selective_gates/u shape", lambda: ops.selective_gates(z(B, T, DK + 1), DELTA, A_SS, BM),
     ValueError, "selective_gates: u must have shape [..., D] like delta (2, 5, 4)"),
    ("selective_step/signed not a bool", lambda: ops.selective_scan_step(
        z(B, DK), z(B, DK), A_SS, z(B, DV), z(B, DV), signed="no"), TypeError,
     "selective_scan_step: signed must be a bool"),
    ("selective_step/h", lambda: ops.selective_scan_step(
        z(B, DK), z(B, DK), A_SS, z(B, DV), z(B, DV), z(B, DK, DV + 1)), ValueError,
     "selective_scan_step: h must have shape [B, D, N]"),
    # structured_recurrence: features x [B, T, d_in] + weights + structure, or Affine elements
    ("structured/unknown structure", lambda: SR(X_SR, W_SR, B_SR, structure="hexagonal"),
     ValueError, "structured_recurrence: structure must be one of"),
    ("structured/no structure", lambda: SR(X_SR, W_SR, B_SR), ValueError,
     "structure must be one of"),
    ("structured/weights d_in", lambda: SR(X_SR, z(4, DK), B_SR, structure="diagonal"),
     ValueError, "weights must have 2 axes with d_in = 3 first"),
    ("structured/b n", lambda: SR(X_SR, W_SR, z(B, T, DK + 1), structure="diagonal"),
     ValueError, "b must have shape [B, T, n] with n = 4"),
    ("structured/h0", lambda: SR(X_SR, W_SR, B_SR, structure="diagonal", h0=z(B, DK + 1)),
     ValueError, "h0 must have shape [B, n]"),
    ("structured/block size not dividing n", lambda: SR(X_SR, z(3, 1, 3, 3), B_SR,
                                                        structure="block_diagonal"),
     ValueError, "b must have shape [B, T, n] with n = 3"),
    ("structured/Walsh-Hadamard not a power of two", lambda: SR(X_SR, z(3, 6), z(B, T, 6),
                                                                structure="walsh_hadamard"),
     ValueError, "the Walsh-Hadamard size must be a power of two, got n = 6"),
    ("structured/elements without monoid", lambda: SR(ELEMS), TypeError,
     "with Affine elements pass monoid="),
    ("structured/elements with weights", lambda: SR(ELEMS, W_SR, monoid=DIAGONAL), ValueError,
     "with Affine elements, weights, b and structure must be None"),
    ("structured/features with monoid", lambda: SR(X_SR, W_SR, B_SR, structure="diagonal",
                                                   monoid=DENSE),
     ValueError, "structured_recurrence: with features x (and weights, b, structure) monoid "
     "must be None"),
    ("structured/features with monoid, no structure", lambda: SR(X_SR, W_SR, B_SR,
                                                                 monoid=DIAGONAL),
     ValueError, "monoid must be None, the structure gives it"),
    ("structured/exchange", lambda: SR(X_SR, W_SR, B_SR, structure="diagonal",
                                       exchange="bcast"), ValueError,
     "structured_recurrence: exchange must be one of ('all_gather', 'ppermute')"),
    ("structured/axis_name not a str", lambda: SR(X_SR, W_SR, B_SR, structure="diagonal",
                                                  axis_name=3), TypeError,
     "structured_recurrence: axis_name must be the name (str) of the mesh axis"),
    ("structured/int x", lambda: SR(i32(B, T, 3), W_SR, B_SR, structure="diagonal"), TypeError,
     "x must be a floating-point array"),
    ("structured/chunk_size 0", lambda: SR(X_SR, W_SR, B_SR, structure="diagonal",
                                           implementation="chunked", chunk_size=0), ValueError,
     "structured_recurrence: chunk_size must be a positive int"),
    ("structured/unknown implementation", lambda: SR(X_SR, W_SR, B_SR, structure="diagonal",
                                                     implementation="x"), ValueError, IMPLS),
    ("structured_step/h", lambda: ops.structured_recurrence_step(
        z(B, 3), W_SR, z(B, DK), z(B, DK + 1), structure="diagonal"), ValueError,
     "must have shape [B, n]"),
    ("structured_step/features with monoid", lambda: ops.structured_recurrence_step(
        z(B, 3), W_SR, z(B, DK), structure="diagonal", monoid=DENSE), ValueError,
     "structured_recurrence_step: with features x (and weights, b, structure) monoid must be "
     "None"),
]

SCANS = [
    ("scan/axis out of range", lambda: scan(DIAGONAL, ELEMS, axis=5), ValueError,
     "scan: axis 5 is out of range: elems have 2 batch axes"),
    ("scan/axis negative out of range", lambda: scan(DIAGONAL, ELEMS, axis=-4), ValueError,
     "axis -4 is out of range"),
    ("scan/axis a string", lambda: scan(DIAGONAL, ELEMS, axis="1"), TypeError,
     "scan: axis must be an int, got '1'"),
    ("scan/axis a float", lambda: scan(DIAGONAL, ELEMS, axis=1.0), TypeError,
     "axis must be an int"),
    ("scan/reverse not a bool", lambda: scan(DIAGONAL, ELEMS, axis=1, reverse="no"), TypeError,
     "scan: reverse must be a bool"),
    ("scan/leaves with different T", lambda: scan(DIAGONAL, Affine(z(2, 3, 4), z(2, 4, 4)),
                                                  axis=1), ValueError,
     "elems.b must have shape (2, 3, 4) (vector state) or (2, 3, 4, 'm')"),
    ("scan/leaves with different n", lambda: scan(DIAGONAL, Affine(z(2, 3, 4), z(2, 3, 5)),
                                                  axis=1), ValueError, "got (2, 3, 5)"),
    ("scan/dense A not square", lambda: scan(DENSE, Affine(z(2, 3, 4, 5), z(2, 3, 4)), axis=1),
     ValueError, "DENSE: elems.A must be square [..., n, n]"),
    ("scan/block size", lambda: scan(BlockDiagonal(2), Affine(z(2, 3, 2, 3, 3), z(2, 3, 4)),
                                     axis=1), ValueError,
     "BlockDiagonal(2): elems.A must have shape [..., n/2, 2, 2]"),
    ("scan/None A", lambda: scan(DIAGONAL, Affine(None, z(2, 3, 4)), axis=1), TypeError,
     "elems.A must be an array, got None"),
    ("scan/int A", lambda: scan(DIAGONAL, Affine(i32(2, 3, 4), z(2, 3, 4)), axis=1), TypeError,
     "elems.A must be a floating-point array"),
    ("scan/monoid a name", lambda: scan("diagonal", ELEMS, axis=1), TypeError,
     "scan: monoid must be an lrnn monoid"),
    ("scan/h0 shape", lambda: scan(DIAGONAL, ELEMS, z(2, 5), axis=1), ValueError,
     "h0 must have the shape of elems.b without its time axis"),
    ("scan/exchange", lambda: scan(DIAGONAL, ELEMS, axis=1, exchange="bcast"), ValueError,
     "scan: exchange must be one of ('all_gather', 'ppermute'), got 'bcast'"),
    ("scan/axis_name not a str", lambda: scan(DIAGONAL, ELEMS, axis=1, axis_name=3), TypeError,
     "scan: axis_name must be the name (str) of the mesh axis"),
    ("scan_sequential/exchange", lambda: scan_sequential(DIAGONAL, ELEMS, axis=1,
                                                         exchange="bcast"), ValueError,
     "scan_sequential: exchange must be one of ('all_gather', 'ppermute')"),
    ("scan_sequential/axis", lambda: scan_sequential(DIAGONAL, ELEMS, axis=5), ValueError,
     "scan_sequential: axis 5 is out of range"),
    ("scan_sequential/axis a string", lambda: scan_sequential(DIAGONAL, ELEMS, axis="1"),
     TypeError, "scan_sequential: axis must be an int"),
    ("scan_sequential/leaves", lambda: scan_sequential(DIAGONAL, Affine(z(2, 3, 4), z(2, 4, 4)),
                                                       axis=1), ValueError,
     "elems.b must have shape (2, 3, 4)"),
    ("BlockDiagonal/size 0", lambda: BlockDiagonal(0), ValueError,
     "BlockDiagonal: block_size must be a positive int, got 0"),
    ("BlockDiagonal/size a float", lambda: BlockDiagonal(2.5), ValueError,
     "block_size must be a positive int, got 2.5"),
]

TRANSITIONS = [
    ("householder/k rank", lambda: tr.householder_product(z(4), o(1)), ValueError,
     "householder_product: k must be [..., n_h, n]"),
    ("householder/beta shape", lambda: tr.householder_product(o(3, 2, 4), o(3, 3)), ValueError,
     "beta must have shape (3, 2) ([..., n_h])"),
    ("householder/v shape", lambda: tr.householder_product(o(3, 2, 4), o(3, 2), v=z(3, 3, 5)),
     ValueError, "v must have shape (3, 2, 'm')"),
    ("householder/gate shape", lambda: tr.householder_product(o(3, 2, 4), o(3, 2),
                                                              gate=o(3, 2)),
     ValueError, "gate must have shape (3,)"),
    ("householder/int k", lambda: tr.householder_product(i32(3, 2, 4), o(3, 2)), TypeError,
     "householder_product: k must be a floating-point array"),
    ("hadamard/0", lambda: tr.hadamard_matrix(0), ValueError, "must be a power of two, got n = 0"),
    ("hadamard/negative", lambda: tr.hadamard_matrix(-4), ValueError, "got n = -4"),
    ("fwht/size 6", lambda: tr.fwht(z(3, 6)), ValueError,
     "fwht: the Walsh-Hadamard size must be a power of two, got n = 6"),
    ("fwht/axis out of range", lambda: tr.fwht(z(3, 4), axis=3), ValueError,
     "fwht: axis 3 is out of range for x of shape (3, 4)"),
    ("fwht/axis a string", lambda: tr.fwht(z(3, 4), axis="0"), TypeError,
     "fwht: axis must be an int"),
    ("walsh_hadamard/size 6", lambda: tr.walsh_hadamard(z(3, 6)), ValueError,
     "walsh_hadamard: w: the Walsh-Hadamard size must be a power of two"),
    ("walsh_hadamard_apply/h", lambda: tr.walsh_hadamard_apply(z(3, 4), z(3, 5)), ValueError,
     "walsh_hadamard_apply: h must have shape (3, 4) ([..., n]) or (3, 4, 'm')"),
    ("dplr/rank of v", lambda: tr.dplr(z(3, 4), z(3, 4, 2), z(3, 4, 3)), ValueError,
     "dplr: v must have the shape of u (3, 4, 2)"),
    ("dplr/n of u", lambda: tr.dplr(z(3, 4), z(3, 5, 2), z(3, 5, 2)), ValueError,
     "dplr: u must have shape (3, 4, 'r')"),
    ("dplr_apply/h", lambda: tr.dplr_apply(z(3, 4), z(3, 4, 2), z(3, 4, 2), z(3, 5)), ValueError,
     "dplr_apply: h must have shape (3, 4)"),
    ("dplr/None d", lambda: tr.dplr(None, z(3, 4, 2), z(3, 4, 2)), TypeError,
     "dplr: d must be an array, got None"),
    ("sparse/mask shape", lambda: tr.sparse(o(3, 4, 4), np.eye(3, dtype=bool)), ValueError,
     "sparse: mask must have shape (4, 4)"),
    ("sparse/values not square", lambda: tr.sparse(o(3, 4, 5), np.eye(4, dtype=bool)),
     ValueError, "sparse: values must be [..., n, n]"),
    ("slice/unknown structure", lambda: tr.slice_transition(z(3, 2), z(2, 4), "hex"), ValueError,
     "slice_transition: structure must be one of"),
    ("slice/block-diagonal weights rank", lambda: tr.slice_transition(z(3, 2), z(2, 4, 4),
                                                                      "block_diagonal"),
     ValueError, "slice_transition('block_diagonal'): weights must have 4 axes with d_in = 2"),
    ("slice/weights d_in", lambda: tr.slice_transition(z(3, 2), z(3, 4), "diagonal"), ValueError,
     "weights must have 2 axes with d_in = 2 first, got shape (3, 4)"),
    ("slice/dplr weights not a tuple", lambda: tr.slice_transition(z(3, 2), z(2, 4), "dplr"),
     TypeError, "slice_transition('dplr'): weights must be a tuple (d [d_in, n]"),
    ("slice/Walsh-Hadamard 6", lambda: tr.slice_transition(z(3, 2), z(2, 6), "walsh_hadamard"),
     ValueError, "the Walsh-Hadamard size must be a power of two, got n = 6"),
    ("slice_monoid/unknown", lambda: tr.slice_monoid("hex", z(2, 4)), ValueError,
     "slice_monoid: structure must be one of"),
    ("slice_apply/h", lambda: tr.slice_apply(z(3, 2), z(2, 4), "diagonal", z(3, 5)), ValueError,
     "slice_apply: h must be [..., n] with n = 4"),
    ("mamba_gate/signed not a bool", lambda: tr.mamba_gate(z(3, 4), -o(4), signed="yes"),
     TypeError, "mamba_gate: signed must be a bool, got 'yes'"),
    ("mamba_gate/shapes", lambda: tr.mamba_gate(z(3, 4), -o(5)), ValueError,
     "mamba_gate: dt (3, 4) and A (5,) must broadcast together"),
    ("householder_beta/signed not a bool", lambda: tr.householder_beta(z(3), signed="no"),
     TypeError, "householder_beta: signed must be a bool"),
    ("unit_gate/int", lambda: tr.unit_gate(i32(3)), TypeError,
     "unit_gate: x must be a floating-point array"),
    # 2D pLSTM
    ("p_mode_gates/signed not a bool", lambda: grid.p_mode_gates(*[o(1, 2, 3, 1)] * 7,
                                                                 signed="no"), TypeError,
     "p_mode_gates: signed must be a bool, got 'no'"),
    ("plstm2d/implementation", lambda: _plstm(implementation="chunked"), ValueError,
     "plstm2d: implementation must be one of ('sequential', 'scan', 'auto')"),
    ("plstm2d/orientation", lambda: _plstm(orientation=4), ValueError,
     "orientation must be an int in 0..3"),
    ("plstm2d/q rank", lambda: _plstm(q=z(1, 2, 3, 4)), ValueError,
     "plstm2d: q must have shape [B, X, Y, H, dk]"),
    ("plstm2d/gates a tuple", lambda: _plstm(gates=(o(1, 2, 3, 1),) * 9), TypeError,
     "plstm2d: gates must be a PLSTMGates"),
]

LAYERS = [
    ("mixer/heads 0", lambda: _mixer(mixer="gla", heads=0), ValueError,
     "heads must be >= 1, got 0"),
    ("mixer/d_model not divisible", lambda: _mixer(mixer="gla", heads=3), ValueError,
     "d_model=16 must be divisible by heads=3"),
    ("mixer/head_dim negative", lambda: _mixer(mixer="deltaproduct", head_dim=-1), ValueError,
     "head_dim must be >= 1 (or 0 for d_model / heads)"),
    ("mixer/n_h 0", lambda: _mixer(mixer="deltaproduct", n_h=0), ValueError,
     "n_h must be >= 1, got 0"),
    ("mixer/deltanet n_h 2", lambda: _mixer(mixer="deltanet", n_h=2), ValueError,
     "deltanet has n_h = 1"),
    ("mixer/eigen", lambda: _mixer(mixer="diagonal", eigen="both"), ValueError,
     "eigen must be 'unit' or 'signed'"),
    ("mixer/unknown", lambda: _mixer(mixer="mamba7"), ValueError,
     "unknown mixer 'mamba7'; valid mixers:"),
    ("mixer/slice drive", lambda: _mixer(mixer="slice", slice_drive="relu"), ValueError,
     "slice_drive must be 'tanh' or 'linear'"),
    ("mixer/slice structure", lambda: _mixer(mixer="slice", structure="hex"), ValueError,
     "unknown SLiCE structure 'hex'"),
    ("mixer/slice block size", lambda: _mixer(mixer="slice", block_size=5), ValueError,
     "slice_state=16 must be divisible by block_size=5"),
    # ModelConfig checks every field when it is made (the one place every layer goes through)
    ("config/d_model 0", lambda: lnn.ModelConfig(d_model=0), ValueError,
     "ModelConfig: d_model must be >= 1, got 0"),
    ("config/d_model a float", lambda: lnn.ModelConfig(d_model=16.0), TypeError,
     "ModelConfig: d_model must be an int, got 16.0"),
    ("config/layers 0", lambda: lnn.ModelConfig(layers=0), ValueError,
     "ModelConfig: layers must be >= 1, got 0"),
    ("config/lstm heads 0", lambda: lnn.ModelConfig(mixer="lstm", heads=0), ValueError,
     "ModelConfig: heads must be >= 1, got 0"),
    ("config/d_state 0", lambda: _mixer(mixer="diagonal", d_state=0), ValueError,
     "ModelConfig: d_state must be >= 1, got 0"),
    ("config/expand 0", lambda: _mixer(mixer="diagonal", expand=0), ValueError,
     "ModelConfig: expand must be >= 1, got 0"),
    ("config/conv negative", lambda: lnn.ModelConfig(conv=-1), ValueError,
     "ModelConfig: conv must be >= 1 (or 0 for no convolution), got -1"),
    ("config/slice_inputs 0", lambda: _mixer(mixer="slice", slice_inputs=0), ValueError,
     "ModelConfig: slice_inputs must be >= 1, got 0"),
    ("config/slice_state negative", lambda: lnn.ModelConfig(slice_state=-4), ValueError,
     "ModelConfig: slice_state must be >= 1 (or 0 for d_model), got -4"),
    ("config/block_size 0", lambda: lnn.ModelConfig(block_size=0), ValueError,
     "ModelConfig: block_size must be >= 1, got 0"),
    ("config/rank 0", lambda: _mixer(mixer="slice", structure="dplr", rank=0), ValueError,
     "ModelConfig: rank must be >= 1, got 0"),
    ("config/mlp_ratio negative", lambda: _model(mlp_ratio=-1), ValueError,
     "ModelConfig: mlp_ratio must be >= 1 (or 0 for no MLP), got -1"),
    ("config/chunk_size 0", lambda: lnn.ModelConfig(chunk_size=0), ValueError,
     "ModelConfig: chunk_size must be >= 1, got 0"),
    ("config/implementation", lambda: lnn.ModelConfig(implementation="fused"), ValueError,
     "ModelConfig: implementation must be one of ('auto', 'sequential', 'scan', 'chunked', "
     "'pallas'), got 'fused'"),
    ("config/dtype", lambda: lnn.ModelConfig(dtype="float8"), ValueError,
     "ModelConfig: dtype must be one of ('float32', 'bfloat16'), got 'float8'"),
    ("config/dropout 1", lambda: lnn.ModelConfig(dropout=1.0), ValueError,
     "ModelConfig: dropout must be in [0, 1), got 1.0"),
    ("config/out_gate not a bool", lambda: lnn.ModelConfig(out_gate="no"), TypeError,
     "ModelConfig: out_gate must be a bool, got 'no'"),
    ("config/eigen for an lstm", lambda: lnn.ModelConfig(mixer="lstm", eigen="both"),
     ValueError, "ModelConfig: eigen must be 'unit' or 'signed'"),
    ("config/replace", lambda: dataclasses.replace(lnn.ModelConfig(), n_h=0), ValueError,
     "ModelConfig: n_h must be >= 1, got 0"),
    ("mixer/slice Walsh-Hadamard size", lambda: _mixer(mixer="slice", d_model=12,
                                                       structure="walsh_hadamard"),
     ValueError, "the Walsh-Hadamard structure needs a power-of-two state size, got n = 12"),
    ("model/vocab_size 0", lambda: _model(vocab_size=0), ValueError,
     "SequenceModel: vocab_size must be >= 1, got 0"),
    ("model/num_classes 0", lambda: _model(num_classes=0), ValueError,
     "SequenceModel: num_classes must be >= 1, got 0"),
    ("model/vocab_size a float", lambda: _model(vocab_size=5.0), TypeError,
     "SequenceModel: vocab_size must be an int"),
    ("layers/conv kernel 0", lambda: lnn.CausalConv1D(4, 0, rngs=nnx.Rngs(0)), ValueError,
     "kernel_size must be >= 1"),
    ("layers/rope odd head", lambda: lnn.rope(z(2, 3, 1, 5), jnp.arange(3)), ValueError,
     "rope needs an even head size, got 5"),
]


@pytest.mark.parametrize("call, err, words", [
    row if isinstance(row, type(pytest.param())) else pytest.param(*row[1:], id=row[0])
    for row in OPS + SCANS + TRANSITIONS + LAYERS])
def test_bad_input_table(call, err, words):
    with pytest.raises(err) as e:
        call()
    assert words in str(e.value)


@pytest.mark.parametrize("fn, args", [
    (lambda q, k, v, g: GLA(q, k, v, g), (Q, o(B, T, H, DK + 1), V, G)),
    (lambda q, k, v, b: DR(q, k, v, b), (Q, K, V, o(B, T))),
    (lambda q, k, v, b: DP(q, k, v, b), (Q, K, VP, BP)),
    (lambda a, b: LR(a, b), (i32(B, T, DK), B_LR)),
    (lambda u, d, A, b, c: SS(u, d, A, b, c), (U, DELTA, -o(DK + 1, DV), BM, CM)),
    (lambda u, d, A, b: ops.selective_gates(u, d, A, b), (U, DELTA, -o(DK + 1, DV), BM)),
    (lambda A, b: scan(DIAGONAL, Affine(A, b), axis=1), (z(2, 3, 4), z(2, 4, 4))),
    (lambda w, h: tr.walsh_hadamard_apply(w, h), (z(3, 4), z(3, 5))),
], ids=["gla", "delta_rule", "delta_product", "linear_recurrence", "selective_scan",
        "selective_gates", "scan", "walsh_hadamard_apply"])
def test_checks_run_at_trace_time(fn, args):
    # the arrays are jit arguments (tracers): the shape and dtype checks fire while tracing,
    # before anything is compiled or run
    with pytest.raises((ValueError, TypeError)) as e:
        jax.jit(fn).trace(*args)
    assert "must" in str(e.value)


# ------------------------------------------------------------------------------------------
# Every CLI: one "error: ..." line on stderr, exit status 2 (called in-process)
# ------------------------------------------------------------------------------------------
def _main(module: str, fn: str = "main"):
    import importlib

    return getattr(importlib.import_module(module), fn)


_TRAIN = ["--task", "parity", "--model", "diagonal", "--preset", "tiny"]
_NUM = ["--lengths", "8", "--dtypes", "float32", "--implementations", "sequential", "--no-grads"]
CLIS = [
    # (id, module, function, argv (OUT in it: a fresh directory), words)
    ("train/unknown task", "experiments.train", "main", ["--task", "parrity", "--out", "OUT"],
     "unknown task 'parrity'; valid tasks:"),
    ("train/steps 0", "experiments.train", "main", _TRAIN + ["--steps", "0", "--out", "OUT"],
     "--steps must be a positive integer, got 0"),
    ("train/steps not an int", "experiments.train", "main",
     _TRAIN + ["--steps", "x", "--out", "OUT"], "Error parsing --steps"),
    ("train/unknown flag", "experiments.train", "main", _TRAIN + ["--bogus", "--out", "OUT"],
     "Unrecognized options: --bogus"),
    ("train/eigen", "experiments.train", "main", _TRAIN + ["--eigen", "both", "--out", "OUT"],
     "invalid choice 'both' for argument '--eigen'"),
    ("train/d_model 0", "experiments.train", "main", _TRAIN + ["--d-model", "0", "--out", "OUT"],
     "--d-model must be a positive integer"),
    ("train/heads not dividing", "experiments.train", "main",
     ["--task", "parity", "--model", "gla", "--preset", "tiny", "--heads", "3", "--out", "OUT"],
     "building the model: d_model=16 must be divisible by heads=3"),
    ("train/lr negative", "experiments.train", "main", _TRAIN + ["--lr", "-1", "--out", "OUT"],
     "--lr must be > 0"),
    ("train/structure", "experiments.train", "main",
     _TRAIN + ["--structure", "hex", "--out", "OUT"], "--structure must be one of"),
    ("train/mesh", "experiments.train", "main", _TRAIN + ["--mesh", "data=64", "--out", "OUT"],
     "mesh spec 'data=64' needs 64 devices"),
    ("train/no out", "experiments.train", "main", _TRAIN, "--out DIR is required"),
    ("train/out a file", "experiments.train", "main", _TRAIN + ["--out", "FILE/run"],
     "is not a directory"),
    ("evaluate/per-length 0", "experiments.evaluate", "main", ["OUT", "--per-length", "0"],
     "argument --per-length: expected a positive integer, got 0"),
    ("evaluate/per-length negative", "experiments.evaluate", "main",
     ["OUT", "--per-length", "-3"], "expected a positive integer, got -3"),
    ("evaluate/lengths malformed", "experiments.evaluate", "main", ["OUT", "--lengths", "5,,6"],
     "argument --lengths: expected comma-separated integers"),
    ("evaluate/lengths 0", "experiments.evaluate", "main", ["OUT", "--lengths", "8,0"],
     "expected positive integers, got 0"),
    ("evaluate/not a run", "experiments.evaluate", "main", ["OUT"],
     "config.json not found: is"),
    ("reproduce/path in a task name", "experiments.reproduce", "main",
     ["--out", "OUT", "--runs", "../../x:diagonal:unit"], "unknown task '../../x'"),
    ("reproduce/bad extra flag", "experiments.reproduce", "main",
     ["--out", "OUT", "--runs", "parity:diagonal:unit", "--preset", "tiny", "--seeds", "0",
      "--", "--steps", "0"], "row parity:diagonal:unit: --steps must be a positive integer"),
    ("reproduce/unknown preset", "experiments.reproduce", "main",
     ["--out", "OUT", "--runs", "parity:diagonal:unit", "--preset", "gpu9"],
     "unknown preset 'gpu9'"),
    ("reproduce/timeout negative", "experiments.reproduce", "main",
     ["--out", "OUT", "--timeout", "-1"], "argument --timeout: expected a number >= 0"),
    ("reproduce/jobs 0", "experiments.reproduce", "main", ["--out", "OUT", "--jobs", "0"],
     "--jobs must be >= 1"),
    ("plot_runs/smooth 0", "experiments.plot_runs", "main",
     ["OUT", "--out", "OUT/p.png", "--smooth", "0"], "argument --smooth: expected a positive"),
    ("plot_runs/missing run", "experiments.plot_runs", "main", ["OUT/nope", "--out", "OUT/p.png"],
     "no such run directory"),
    ("demo/unknown flag", "experiments.demo", "cli", ["--bogus"],
     "unrecognized arguments: --bogus"),
    ("structures/n not a power of two", "experiments.structures", "cli", ["--n", "6"],
     "--n must be a power of two >= 4"),
    ("numerics/lengths negative", "lrnn.numerics", "main", ["--lengths", "8,-4"],
     "argument --lengths: expected a positive integer, got -4"),
    ("numerics/lengths malformed", "lrnn.numerics", "main", ["--lengths", "8,,4"],
     "expected comma-separated positive integers"),
    ("numerics/dtype", "lrnn.numerics", "main", ["--dtypes", "float8"],
     "--dtypes: float8: expected comma-separated names"),
    ("numerics/dk 0", "lrnn.numerics", "main", ["--dk", "0"], "--dk: expected a positive integer"),
    ("numerics/gate for an op without gates", "lrnn.numerics", "main",
     ["--op", "linear_recurrence", "--gate", "key"], "linear_recurrence takes no gate"),
    ("numerics/out not a directory", "lrnn.numerics", "main", _NUM + ["--out", "FILE/x"],
     "--out FILE/x: Not a directory"),
    ("bench.auto/dtype", "experiments.bench.auto", "main",
     ["--out", "OUT/a.json", "--grid", "smoke", "--dtypes", "float8"], "unknown --dtypes"),
    ("bench.auto/budget negative", "experiments.bench.auto", "main",
     ["--out", "OUT/a.json", "--budget-s", "-1"], "--budget-s: expected a number >= 0"),
    ("bench.auto/derive missing file", "experiments.bench.auto", "main",
     ["derive", "OUT/none.json", "--out", "OUT/t.py"], "No such file or directory"),
    ("bench.delta_recurrent/dtype", "experiments.bench.delta_recurrent", "main",
     ["--out", "OUT/d.json", "--dtypes", "float8"], "invalid choice: 'float8'"),
    ("bench.kernels/shape index", "experiments.bench.kernels", "main", ["--shapes", "7"],
     "--shapes: index 7 out of range"),
    ("bench.kernels/report without raw", "experiments.bench.kernels", "main", ["report"],
     "report needs --raw"),
    ("bench.kernels/unknown op", "experiments.bench.kernels", "main", ["--ops", "nope"],
     "argument --ops: 'nope': expected comma-separated names"),
    ("bench.multigpu/P 0", "experiments.bench.multigpu", "main", ["--P", "0"],
     "argument --P: expected a positive integer, got 0"),
    ("bench.multigpu/strong_t", "experiments.bench.multigpu", "main", ["--P", "3"],
     "--strong-t 65536 is not a multiple of --P 3"),
    ("bench.multigpu/implementation", "experiments.bench.multigpu", "main",
     ["--implementation", "fused"], "argument --implementation: invalid choice"),
    ("bench.multigpu_train/set value", "experiments.bench.multigpu_train", "main",
     ["--set", "d_model=x", "--out", "OUT"], "--set 'd_model=x': d_model expects int"),
    ("bench.multigpu_train/set field", "experiments.bench.multigpu_train", "main",
     ["--set", "foo=1", "--out", "OUT"], "--set 'foo=1': expected FIELD=VALUE"),
    ("bench.multigpu_train/steps 0", "experiments.bench.multigpu_train", "main",
     ["--steps", "0", "--out", "OUT"], "argument --steps: expected a positive integer"),
    ("bench.multigpu_train/mesh", "experiments.bench.multigpu_train", "main",
     ["--meshes", "foo", "--out", "OUT"], "mesh spec 'foo'"),
    ("bench.multigpu_train/compare", "experiments.bench.multigpu_train", "main",
     ["--compare", "OUT/none", "--out", "OUT"], "--compare: not a run directory"),
    ("bench.ops/T 0", "experiments.bench.ops", "cli", ["--T", "0"],
     "--T must be a positive integer"),
    ("bench.ops/unknown op", "experiments.bench.ops", "cli", ["--ops", "nope"],
     "--ops 'nope': unknown op 'nope'"),
    ("bench.ops/gate kind", "experiments.bench.ops", "cli", ["--ops", "delta_rule:key"],
     "delta_rule takes a gate kind :head or :none"),
    ("bench.parallel/devices 0", "experiments.bench.parallel", "main", ["--devices", "0"],
     "argument --devices: expected positive integers"),
    ("bench.parallel/unknown op", "experiments.bench.parallel", "main", ["--ops", "nope"],
     "argument --ops: 'nope'"),
    ("bench.parallel/length per device", "experiments.bench.parallel", "main",
     ["--lengths", "100", "--devices", "8"], "--lengths 100 is not a multiple of --devices 8"),
    ("bench.regs/op", "experiments.bench.regs", "main", ["--op", "foo"],
     "argument --op: invalid choice: 'foo'"),
    ("bench.stages/op", "experiments.bench.stages", "main", ["--op", "nope"],
     "argument --op: 'nope'"),
    ("bench.stages/shape", "experiments.bench.stages", "main", ["--shape", "1,2"],
     "--shape: expected B,T,H,D (four integers)"),
    ("bench.stages/knob", "experiments.bench.stages", "main", ["--knob", "nomod.X=1"],
     "--knob: expected MODULE.NAME[.KEY]=v1,v2"),
    ("bench.train_step/model", "experiments.bench.train_step", "main", ["--models", "mamba7"],
     "--models 'mamba7': valid models:"),
    ("bench.train_step/set", "experiments.bench.train_step", "main", ["--set", "foo=1"],
     "--set: unknown Config fields ['foo']"),
    ("bench.train_step/implementation", "experiments.bench.train_step", "main",
     ["--implementations", "fused"], "--implementations 'fused': valid:"),
]


@pytest.mark.parametrize("module, fn, argv, words", [pytest.param(*r[1:], id=r[0])
                                                     for r in CLIS])
def test_cli_errors_are_one_line(module, fn, argv, words, tmp_path, capsys):
    out, file = tmp_path / "out", tmp_path / "file"
    file.write_text("")
    argv = [a.replace("OUT", str(out)).replace("FILE", str(file)) for a in argv]
    words = words.replace("FILE", str(file))
    main = _main(module, fn)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    last = err.strip().splitlines()[-1]
    assert "error: " in last and words in last, err
    assert "Traceback" not in err
    if "evaluate" not in module and "plot_runs" not in module:
        assert not out.exists()  # a refused command wrote nothing


def test_cli_errors_in_a_fresh_process(tmp_path):
    # the same through `python -m` (the exit status a shell sees), two at a time
    cmds = [[sys.executable, "-m", "experiments.train", *_TRAIN, "--steps", "0", "--out",
             str(tmp_path / "run")],
            [sys.executable, "-m", "experiments.evaluate", str(tmp_path / "none")]]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1]) for c in cmds]
    for p, words in zip(procs, ("--steps must be a positive integer", "config.json not found")):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, err
        lines = [s for s in err.strip().splitlines() if s.strip()]
        assert len(lines) == 1 and "error: " in lines[0] and words in lines[0], err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------
# evaluate (item 5): batches sized to what is evaluated, memory bounded, read-only runs
# ------------------------------------------------------------------------------------------
def _tiny_cfg(tmp_path, model="diagonal", **kw):
    from test_train import tiny

    return dataclasses.replace(tiny(tmp_path, f"run_{model}", **kw), model=model)


def test_evaluation_batches_are_sized_to_the_sequences_evaluated(tmp_path):
    from experiments.train import Evaluator, init_state, make_task

    cfg = _tiny_cfg(tmp_path)
    task = make_task(cfg)
    graphdef, rest, state, _, _ = init_state(cfg, task)
    ev = Evaluator(graphdef, task, batch=cfg.eval_batch)
    params = state["params"]
    hits = ev.sequence_hits(params, rest, jax.random.key(0), [100_000] * 4)
    assert hits.shape == (4,)
    # 4 sequences of 100,000 tokens: batches of at most 4 (not eval_batch = 512), each well
    # under a GiB (a batch padded to 512 sequences needed tens of GB)
    assert {k[1] for k in ev.programs} <= {1, 2, 4}
    assert max(b for _, b in ev.programs.values()) < 2**30


def test_a_binding_memory_budget_changes_how_not_what_is_evaluated(tmp_path):
    # the model runs over pieces of the batch (lax.map) instead of smaller batches: the same
    # sequences (they are sampled per batch), the same accuracies, whatever the device holds
    from experiments.train import Evaluator, init_state, make_task

    cfg = _tiny_cfg(tmp_path)
    task = make_task(cfg)
    graphdef, rest, state, _, _ = init_state(cfg, task)
    params, key = state["params"], jax.random.key(3)
    lengths = [7] * 20 + [33] * 44
    free = Evaluator(graphdef, task, batch=64, budget=2**40)
    hits = free.sequence_hits(params, rest, key, lengths)
    need = max(b for _, b in free.programs.values())
    tight = Evaluator(graphdef, task, batch=64, budget=need // 3)
    np.testing.assert_array_equal(tight.sequence_hits(params, rest, key, lengths), hits)
    fits = [k for k, (_, b) in tight.programs.items() if b <= need // 3]
    assert fits and all(k[3] > 1 for k in fits), tight.programs.keys()


def test_a_length_that_does_not_fit_is_refused_not_allocated(tmp_path):
    from experiments.common.cli import UsageError
    from experiments.train import evaluate, init_state, make_task

    cfg = _tiny_cfg(tmp_path, model="transformer")
    task = make_task(cfg)
    graphdef, rest, state, _, _ = init_state(cfg, task)
    model = nnx.merge(graphdef, state["params"], rest)
    # one sequence of 100,000 tokens through softmax attention: ~150 GiB of scores
    # (the budget given, 8 GiB: the default is half the host's memory)
    with pytest.raises(UsageError, match=r"evaluating one sequence of length 100000 needs "
                                         r"[0-9.]+ GiB .*evaluate shorter lengths"):
        evaluate(model, task, [100_000], per_length=4, budget=8 << 30)


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*"))}


@contextlib.contextmanager
def _read_only(d: Path):
    """``chmod -R a-w d`` for the block (root ignores it: the tests also compare the trees)."""
    paths = [d, *d.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        yield _tree(d)
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | 0o200)


def test_evaluate_only_reads_the_run(tmp_path, capsys, monkeypatch):
    from experiments import evaluate as evaluate_cli
    from experiments import train as train_mod
    from experiments.train import train

    # the 100000-token case below must not fit on any host: 8 GiB, not half the host's memory
    monkeypatch.setattr(train_mod, "eval_memory_budget", lambda: 8 << 30)

    cfg = _tiny_cfg(tmp_path, model="transformer", steps=4, ckpt_every=2)
    train(cfg)
    run = Path(cfg.out)
    damaged, bare = tmp_path / "damaged", tmp_path / "bare"
    shutil.copytree(run, damaged)
    for p in (damaged / "checkpoints" / "4").rglob("*"):  # the newest checkpoint unreadable
        if p.is_file():
            p.write_bytes(b"")
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("checkpoints"))
    capsys.readouterr()
    # a trained run, read-only: evaluates and changes nothing
    with _read_only(run) as before:
        res = evaluate_cli.main([str(run), "--lengths", "13", "--per-length", "4"])
        assert res["lengths"] == [13] and _tree(run) == before
        # a length that does not fit in memory: one error line, nothing allocated or written
        with pytest.raises(SystemExit) as e:
            evaluate_cli.main([str(run), "--lengths", "100000", "--per-length", "4"])
        assert e.value.code == 2 and _tree(run) == before
        err = capsys.readouterr().err.strip().splitlines()
        assert "error: evaluating one sequence of length 100000 needs" in err[-1]
    # the newest checkpoint unreadable: the one before is used, with a warning; nothing is
    # moved aside (a training run would move it to checkpoints_unreadable/)
    with _read_only(damaged) as before:
        assert evaluate_cli.main([str(damaged), "--lengths", "13", "--per-length", "4"])[
            "lengths"] == [13]
        assert "checkpoint 4 does not restore" in capsys.readouterr().err
        assert _tree(damaged) == before
    # no checkpoints: one error line, and no checkpoints/ directory made
    with _read_only(bare) as before:
        with pytest.raises(SystemExit) as e:
            evaluate_cli.main([str(bare)])
        assert e.value.code == 2
        assert "error: no checkpoint in" in capsys.readouterr().err
        assert _tree(bare) == before and not (bare / "checkpoints").exists()
    json.dumps(res)  # the record is JSON


def test_evaluate_run_checks_its_arguments(tmp_path):
    from experiments.common.cli import UsageError
    from experiments.evaluate import evaluate_run

    for kw, words in ((dict(per_length=0), "--per-length must be a positive integer, got 0"),
                      (dict(per_length=-3), "got -3"),
                      (dict(lengths=[8, -4]), "--lengths must be positive integers")):
        with pytest.raises(UsageError, match=words):
            evaluate_run(tmp_path / "none", **kw)
    with pytest.raises(UsageError, match="config.json not found"):
        evaluate_run(tmp_path / "none")




def test_one_line_errors_can_show_their_traceback(monkeypatch, capsys):
    from experiments.common.cli import UsageError, fail

    for env, shown in ((None, False), ("1", True)):
        if env is None:
            monkeypatch.delenv("LRNN_TRACEBACK", raising=False)
        else:
            monkeypatch.setenv("LRNN_TRACEBACK", env)
        with pytest.raises(SystemExit) as e:
            try:
                raise UsageError("building the model: heads must divide d_model")
            except UsageError as err:
                fail("prog", err)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.strip().endswith(
            "prog: error: building the model: heads must divide d_model")
        assert ("Traceback" in err) == shown
