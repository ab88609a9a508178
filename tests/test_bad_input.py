"""Bad inputs and the errors they get (issue [runs]; so far its item 10: clear errors where
they used to be unclear, and NumPy numbers where they used to be refused); each message names
the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrnn import DIAGONAL, Affine, ops, scan, scan_sequential
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
