"""Every transition structure through its monoid: scan vs scan_sequential, error and time.

For each structure, random token transitions (negative eigenvalues included, spectral norm
<= 1 so a T = 1024 product neither explodes nor underflows) and inputs are built with
``lrnn.transitions``; ``lrnn.scan`` (associative scan) and ``lrnn.scan_sequential``
(``lax.scan``) both run under ``jit``; the table gives the relative error of each against a
float64 NumPy loop, in float32 and with bfloat16 inputs, and the median wall time of each.

    python -m experiments.structures [--T 1024] [--n 16]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import lrnn
from lrnn import Affine
from lrnn import transitions as tr


def _normalise(monoid, A):
    """Scales each token's transition to spectral norm 0.999 (products stay bounded)."""
    dense = monoid.to_dense(A)
    norm = jnp.linalg.norm(dense, ord=2, axis=(-2, -1))
    scale = 0.999 / jnp.maximum(norm, 1e-6)
    if monoid is lrnn.DIAGONAL:
        return A * scale[..., None]
    if isinstance(monoid, lrnn.BlockDiagonal):
        return A * scale[..., None, None, None]
    return A * scale[..., None, None]


def build(structure: str, T: int, n: int, key) -> tuple[str, lrnn.Monoid, Affine]:
    """Random elements of one structure: (monoid-format description, monoid, elements)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    d_in = 4
    x = jax.random.normal(k1, (T, d_in))
    b = jax.random.normal(k2, (T, n))
    s = 0.5
    if structure == "diagonal [0,1]":
        A = tr.unit_gate(jax.random.normal(k3, (T, n)) + 2.0)
        return "DIAGONAL", lrnn.DIAGONAL, Affine(A, b)
    if structure == "diagonal [-1,1]":
        A = tr.signed_gate(3.0 * jax.random.normal(k3, (T, n)))
        return "DIAGONAL", lrnn.DIAGONAL, Affine(A, b)
    if structure.startswith("householder"):
        n_h = int(structure.split("n_h=")[1].rstrip(")"))
        k = jax.random.normal(k3, (T, n_h, n))
        k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
        beta = tr.householder_beta(jax.random.normal(k4, (T, n_h)), signed=True)
        v = jax.random.normal(k2, (T, n_h, n))
        return "DENSE", lrnn.DENSE, tr.householder_product(k, beta, v)
    weights = {
        "block-diagonal (bs=4)": jax.random.normal(k3, (d_in, n // 4, 4, 4)) * s / 2,
        "walsh-hadamard": jax.random.normal(k3, (d_in, n)) * s,
        "sparse (p=0.25)": (
            jax.random.normal(k3, (d_in, n, n)) * s / np.sqrt(n / 4),
            jax.random.bernoulli(k4, 0.25, (n, n)),
        ),
        "dplr (r=2)": (
            jax.random.normal(k3, (d_in, n)) * s,
            jax.random.normal(k4, (d_in, n, 2)) * s / np.sqrt(2),
            jax.random.normal(k1, (d_in, n, 2)) * s / np.sqrt(2),
        ),
        "dense": jax.random.normal(k3, (d_in, n, n)) * s / np.sqrt(n),
    }
    kind = {
        "block-diagonal (bs=4)": "block_diagonal",
        "walsh-hadamard": "walsh_hadamard",
        "sparse (p=0.25)": "sparse",
        "dplr (r=2)": "dplr",
        "dense": "dense",
    }[structure]
    w = weights[structure]
    monoid = tr.slice_monoid(kind, w)
    A = _normalise(monoid, tr.slice_transition(x, w, kind))
    return monoid.name, monoid, Affine(A, b)


STRUCTURES = (
    "diagonal [0,1]",
    "diagonal [-1,1]",
    "block-diagonal (bs=4)",
    "householder (n_h=1)",
    "householder (n_h=2)",
    "walsh-hadamard",
    "sparse (p=0.25)",
    "dplr (r=2)",
    "dense",
)


def _reference(monoid, elems) -> np.ndarray:
    A = np.asarray(monoid.to_dense(elems.A.astype(jnp.float32)), np.float64)
    b = np.asarray(elems.b.astype(jnp.float32), np.float64)
    h = np.zeros(b.shape[1:])
    out = np.empty_like(b)
    for t in range(b.shape[0]):
        h = A[t] @ h + b[t]
        out[t] = h
    return out


def _time(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def rel(x, ref) -> float:
    x = np.asarray(x, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def table(T: int = 1024, n: int = 16, seed: int = 0, repeats: int = 5) -> list[dict]:
    """One row per structure and dtype: errors vs float64 and times of scan and sequential."""
    rows = []
    for i, structure in enumerate(STRUCTURES):
        fmt, monoid, elems = build(structure, T, n, jax.random.PRNGKey(seed + i))
        par = jax.jit(lambda e, m=monoid: lrnn.scan(m, e))
        seq = jax.jit(lambda e, m=monoid: lrnn.scan_sequential(m, e))
        for dtype in (jnp.float32, jnp.bfloat16):
            e = Affine(elems.A.astype(dtype), elems.b.astype(dtype))
            ref = _reference(monoid, e)  # the same (rounded) inputs, exact arithmetic
            hp, hs = par(e), seq(e)
            rows.append(
                dict(
                    structure=structure,
                    monoid=fmt,
                    dtype=jnp.dtype(dtype).name,
                    err_scan=rel(hp, ref),
                    err_sequential=rel(hs, ref),
                    scan_vs_sequential=rel(hp, np.asarray(hs, np.float64)),
                    ms_scan=_time(par, e, repeats=repeats),
                    ms_sequential=_time(seq, e, repeats=repeats),
                )
            )
    return rows


def format_table(rows: list[dict]) -> str:
    head = (
        "| structure | monoid | dtype | rel err scan vs sequential | scan vs f64 | "
        "sequential vs f64 | scan ms | sequential ms |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['structure']} | {r['monoid']} | {r['dtype']} | {r['scan_vs_sequential']:.1e} | "
            f"{r['err_scan']:.1e} | {r['err_sequential']:.1e} | {r['ms_scan']:.2f} | "
            f"{r['ms_sequential']:.2f} |"
        )
    return "\n".join(lines)


def main(T: int = 1024, n: int = 16, repeats: int = 5) -> list[dict]:
    print(
        f"lrnn structures: scan (associative) vs scan_sequential, T = {T}, state n = {n}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    rows = table(T, n, repeats=repeats)
    print(format_table(rows))
    print("(bf16: inputs rounded to bfloat16, arithmetic in float32, outputs rounded to bfloat16)")
    return rows


def cli(argv: list[str] | None = None) -> list[dict]:
    """``python -m experiments.structures [--T T] [--n N]``."""
    from experiments.common.cli import positive_int

    p = argparse.ArgumentParser(prog="python -m experiments.structures", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--T", type=positive_int, default=1024, help="sequence length")
    p.add_argument("--n", type=positive_int, default=16,
                   help="state size: a power of two >= 4 (Walsh-Hadamard; blocks of 4)")
    a = p.parse_args(argv)
    if a.n < 4 or a.n & (a.n - 1):
        p.error(f"--n must be a power of two >= 4 (Walsh-Hadamard, blocks of 4), got {a.n}")
    return main(a.T, a.n)


if __name__ == "__main__":
    cli()
