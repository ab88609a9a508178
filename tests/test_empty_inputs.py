"""Empty inputs (T = 0, B = 0, n_h = 0) in every op and implementation: empty outputs and the
initial state as the final state, as the token loop gives (issue [runs], item 8)."""

import jax.numpy as jnp
import numpy as np
import pytest

from lrnn import DIAGONAL, Affine, ops, scan, scan_sequential

IMPLS = ("sequential", "scan", "chunked", "pallas")  # pallas: interpret mode on CPU


def z(*shape):
    return jnp.zeros(shape, jnp.float32)


def S0(B):
    return jnp.arange(B * 2 * 4 * 4, dtype=jnp.float32).reshape(B, 2, 4, 4)


CASES = {
    "linear_recurrence T=0": (lambda i: ops.linear_recurrence(z(2, 0, 3), z(2, 0, 3),
                                                              jnp.ones((2, 3)),
                                                              implementation=i), None),
    "linear_recurrence B=0": (lambda i: ops.linear_recurrence(z(0, 5, 3), z(0, 5, 3),
                                                              implementation=i), None),
    "gla T=0": (lambda i: ops.gated_linear_attention(
        z(2, 0, 2, 4), z(2, 0, 2, 4), z(2, 0, 2, 4), z(2, 0, 2), initial_state=S0(2),
        implementation=i), S0(2)),
    "delta_rule T=0": (lambda i: ops.delta_rule(
        z(2, 0, 2, 4), z(2, 0, 2, 4), z(2, 0, 2, 4), z(2, 0, 2), initial_state=S0(2),
        implementation=i), S0(2)),
    "delta_rule B=0": (lambda i: ops.delta_rule(
        z(0, 5, 2, 4), z(0, 5, 2, 4), z(0, 5, 2, 4), z(0, 5, 2), implementation=i), None),
    "delta_product n_h=0": (lambda i: ops.delta_product(
        z(2, 5, 2, 4), z(2, 5, 2, 0, 4), z(2, 5, 2, 0, 4), z(2, 5, 2, 0), initial_state=S0(2),
        implementation=i), S0(2)),
    "selective_scan T=0": (lambda i: ops.selective_scan(
        z(2, 0, 3), z(2, 0, 3), z(3, 2), z(2, 0, 2), z(2, 0, 2), implementation=i), None),
    "structured_recurrence T=0": (lambda i: ops.structured_recurrence(
        Affine(z(2, 0, 3), z(2, 0, 3)), monoid=DIAGONAL,
        implementation="sequential" if i == "pallas" else i), None),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_empty_inputs_match_the_token_loop(case, impl):
    fn, initial = CASES[case]
    got, want = fn(impl), fn("sequential")
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    if initial is not None:  # nothing happened to the state (n_h = 0: no steps, no gate)
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(initial))


def test_scan_on_an_empty_time_axis():
    elems = Affine(z(2, 0, 3), z(2, 0, 3))
    for fn in (scan, scan_sequential):
        h = fn(DIAGONAL, elems, jnp.ones((2, 3)), axis=1)
        assert h.shape == (2, 0, 3)
