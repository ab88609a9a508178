"""Token-by-token (`pallas_kernels.delta_recurrent`) against chunkwise DeltaNet / DeltaProduct
kernels: where the fused recurrent kernel is faster, behind `delta_product(recurrent=None)`.

    python -m experiments.bench.delta_recurrent --out benchmarks/kernels/delta_recurrent_h200.json

For each shape (B, T, H, dk = dv, n_h) and dtype it times forward + backward (the gradient of
`<o, c> + <S, c'>` with respect to every input, jitted; median of timed calls after warm-up) of
`pallas_kernels.delta_product` with `recurrent=True` and `recurrent=False` (the chunkwise
kernels with their own defaults) and of `lrnn.ops.delta_product(implementation="chunked")`
(XLA), and writes the times, the ratio chunk / recurrent, date, device and versions. Shapes:
the published protocols' (Grazzi et al.'s parity B 256, T 40; DeltaProduct's groups B 2048,
T 128, n_h 1, 2, 4) and 16384 tokens at T = 32 ... 2048 for two head sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

from experiments.bench.kernels import _time

SHAPES = [  # (B, T, H, d, n_h)
    (256, 40, 4, 32, 1), (2048, 128, 8, 32, 1), (2048, 128, 8, 32, 2), (2048, 128, 8, 32, 4),
    (512, 32, 4, 32, 1), (128, 128, 4, 32, 1), (32, 512, 4, 32, 1), (8, 2048, 4, 32, 1),
    (512, 32, 16, 128, 1), (128, 128, 16, 128, 1), (32, 512, 16, 128, 1),
]


def _fn(kind: str):
    import jax
    import jax.numpy as jnp

    import pallas_kernels as pk
    from lrnn import ops

    def loss(x, co, cs):
        if kind == "xla_chunked":
            o, S = ops.delta_product(x["q"], x["k"], x["v"], x["beta"], implementation="chunked")
        else:
            o, S = pk.delta_product(x["q"], x["k"], x["v"], x["beta"],
                                    recurrent=kind == "recurrent")
        return jnp.sum(o.astype(jnp.float32) * co) + jnp.sum(S * cs)

    return jax.jit(jax.grad(loss))


def measure(shape, dtype: str, reps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    B, T, H, d, n_h = shape
    rng = np.random.default_rng(0)
    k = rng.normal(size=(B, T, H, n_h, d))
    x = {"q": rng.normal(size=(B, T, H, d)), "k": k / np.linalg.norm(k, axis=-1, keepdims=True),
         "v": rng.normal(size=(B, T, H, n_h, d)), "beta": rng.uniform(0, 2, (B, T, H, n_h))}
    x = {n: jnp.asarray(a, dtype) for n, a in x.items()}
    co = jnp.asarray(rng.normal(size=(B, T, H, d)), jnp.float32)
    cs = jnp.asarray(rng.normal(size=(B, H, d, d)), jnp.float32)
    ms, errors = {}, {}
    for kind in ("recurrent", "chunk", "xla_chunked"):
        try:
            ms[kind] = round(_time(_fn(kind), x, co, cs, reps=reps, warm=2), 4)
        except Exception as e:  # noqa: BLE001 - recorded, not fatal (e.g. out of memory)
            errors[kind] = f"{type(e).__name__}: {str(e)[:200]}"
        jax.clear_caches()
    rec = dict(B=B, T=T, H=H, d=d, n_h=n_h, L=T * n_h, dtype=dtype, ms=ms)
    if "recurrent" in ms and "chunk" in ms:
        rec["chunk_over_recurrent"] = round(ms["chunk"] / ms["recurrent"], 3)
    if errors:
        rec["errors"] = errors
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench.delta_recurrent",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write (must not exist)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                   choices=["float32", "bfloat16", "float16"])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="the protocol shapes only")
    a = p.parse_args(argv)
    if a.reps < 1:
        p.error("--reps must be >= 1")
    out = Path(a.out)
    if out.exists():
        p.error(f"{out} exists: runs are not overwritten")
    import jax
    from tqdm.auto import tqdm

    dev = jax.devices()[0]
    data = {"meta": {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": getattr(dev, "device_kind", str(dev)), "backend": jax.default_backend(),
        "jax": jax.__version__, "python": platform.python_version(),
        "command": "python -m experiments.bench.delta_recurrent " + " ".join(sys.argv[1:]),
        "metric": "fwd+bwd ms, median"}, "rows": []}
    shapes = SHAPES[:4] if a.quick else SHAPES
    for dt in a.dtypes:
        for shape in tqdm(shapes, desc=f"delta_recurrent {dt}"):
            rec = measure(shape, dt, a.reps)
            data["rows"].append(rec)
            print(json.dumps(rec), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    raise SystemExit(main())
