"""One process of the two-process test (tests/test_multiprocess.py); not collected by pytest.

Reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (lrnn.parallel
.initialize_from_env), builds the global sequence from this process's slab of time steps,
runs a sequence-sharded scan over every device of every process (both exchanges, forward and
gradients), and compares the gathered result with the unsharded scan computed here. Prints
one line ``RESULT <json>`` and exits 0 if every relative error is below the tolerance.
"""

from __future__ import annotations

import functools
import json
import os
import sys

LOCAL_DEVICES = int(os.environ.get("LRNN_MP_LOCAL_DEVICES", "2"))
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import lrnn  # noqa: E402
from lrnn import parallel  # noqa: E402

TOL = 2e-5


def local_slab(full: np.ndarray, mesh, spec) -> np.ndarray:
    """This process's contiguous block of ``full`` under ``NamedSharding(mesh, spec)``."""
    sharding = jax.sharding.NamedSharding(mesh, spec)
    idx = sharding.addressable_devices_indices_map(full.shape).values()
    starts = [min(i[d].start or 0 for i in idx) for d in range(full.ndim)]
    stops = [max(full.shape[d] if i[d].stop is None else i[d].stop for i in idx)
             for d in range(full.ndim)]
    return full[tuple(slice(a, b) for a, b in zip(starts, stops))]


def main() -> int:
    assert parallel.initialize_from_env(timeout_s=60), "JAX_* variables not set"
    pid, nproc = jax.process_index(), jax.process_count()
    n_dev = jax.device_count()
    assert n_dev == nproc * LOCAL_DEVICES, (n_dev, nproc, LOCAL_DEVICES)
    mesh = jax.make_mesh((n_dev,), ("seq",))

    # The same global problem on every process (same seed); each keeps its block of time.
    rng = np.random.default_rng(0)
    t, n, m = 5 * n_dev, 3, 2
    A = (rng.uniform(-1, 1, (t, 2, n, n)) / np.sqrt(n)).astype(np.float32)
    b = rng.normal(size=(t, 2, n, m)).astype(np.float32)
    h0 = rng.normal(size=(2, n, m)).astype(np.float32)
    w = rng.normal(size=(t, 2, n, m)).astype(np.float32)

    spec = jax.P("seq")
    A_g = parallel.global_array(local_slab(A, mesh, spec), mesh, spec, A.shape)
    b_g = parallel.global_array(local_slab(b, mesh, spec), mesh, spec, b.shape)
    w_g = parallel.global_array(local_slab(w, mesh, spec), mesh, spec, w.shape)
    h0_g = parallel.global_array(h0, mesh, jax.P(), h0.shape)

    # The single-process reference, on this process's first device only.
    h_ref = lrnn.scan_sequential(lrnn.DENSE, lrnn.Affine(A, b), h0)
    g_ref = jax.grad(
        lambda A, b, h0: jnp.sum(lrnn.scan_sequential(lrnn.DENSE, lrnn.Affine(A, b), h0) * w),
        argnums=(0, 1, 2),
    )(A, b, h0)

    def rel(x, ref):
        x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
        return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))

    errors = {}
    for exchange in parallel.EXCHANGES:
        f = parallel.sequence_sharded(
            functools.partial(lrnn.scan, lrnn.DENSE), mesh, time_axis=0, exchange=exchange
        )

        def loss(A, b, h0, w, f=f):
            h = f(lrnn.Affine(A, b), h0=h0)
            return jnp.sum(h * w), h

        with jax.set_mesh(mesh):
            (gA, gb, gh0), h = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(
                A_g, b_g, h0_g, w_g
            )
        h_all = multihost_utils.process_allgather(h, tiled=True)
        gA_all = multihost_utils.process_allgather(gA, tiled=True)
        gb_all = multihost_utils.process_allgather(gb, tiled=True)
        errors[exchange] = {
            "h": rel(h_all, h_ref),
            "grad_A": rel(gA_all, g_ref[0]),
            "grad_b": rel(gb_all, g_ref[1]),
            "grad_h0": rel(np.asarray(gh0.addressable_data(0)), g_ref[2]),
        }
    ok = all(e < TOL for d in errors.values() for e in d.values())
    print("RESULT " + json.dumps({"process": pid, "devices": n_dev, "ok": ok, "errors": errors}),
          flush=True)
    jax.distributed.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
