"""How far each implementation of an op is from a float64 reference: tables and plots.

For random inputs (with negative eigenvalues: negative gates, Householder ``beta`` in
[0, 2]) and every (implementation, dtype, length), :func:`compare` measures the relative error
``||x - ref|| / ||ref||`` of the outputs, the final state and the gradients of every input
(of a fixed random linear function of outputs and final state) against the "sequential"
implementation run in float64 on the same inputs (rounded to the dtype under test, so the
error is the implementation's arithmetic and output rounding, not the rounding of its inputs).

CLI::

    python -m lrnn.numerics --op delta_product --lengths 64,256,1024,4096 \\
        --dtypes float32,bfloat16 --out DIR

writes ``DIR/numerics_<op>.csv``, ``.md`` and ``.png`` (error vs length, one line per
implementation and dtype).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lrnn import _compat, ops

__all__ = ["OPS", "random_inputs", "run_op", "compare", "NumericsTable", "main"]

OPS = ("linear_recurrence", "gated_linear_attention", "delta_product", "delta_rule",
       "selective_scan")
METRICS = ("output", "final_state", "grad")
# The gate kinds of each op (``random_inputs``' ``gate``); the others take no gate.
GATES = {"gated_linear_attention": ("head", "key"), "delta_product": ("head", "none"),
         "delta_rule": ("head", "none")}


# ------------------------------------------------------------------------------------------
# inputs and calls
# ------------------------------------------------------------------------------------------
def _signed_gates(rng, shape, low, negative):
    """Gates ``s * u``, ``u ~ U(low, 1)``, ``s = -1`` with probability ``negative``."""
    u = rng.uniform(low, 1.0, shape)
    return np.where(rng.random(shape) < negative, -u, u)


def random_inputs(
    op: str,
    *,
    batch: int = 1,
    length: int = 64,
    heads: int = 2,
    dk: int = 16,
    dv: int = 16,
    n_h: int = 2,
    gate: str = "head",
    gate_low: float = 0.9,
    negative: float = 0.3,
    initial_state: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random float64 inputs for ``op`` (keyword names of the op), with negative eigenvalues.

    Args:
      op: one of :data:`OPS`.
      batch, length, heads, dk, dv, n_h: B, T, H, dk, dv, n_h (``linear_recurrence`` uses
        D = dk; ``selective_scan`` D = dk channels of N = dv states each).
      gate: "head" (``[B, T, H]``), "key" (``[B, T, H, dk]``, GLA only) or "none" (delta ops
        only).
      gate_low: gate magnitudes are uniform in ``[gate_low, 1]``.
      negative: probability that a gate is negative.
      initial_state: include a random initial state.
      seed: numpy seed.

    Returns:
      dict of float64 arrays; keys are the op's argument names. Keys are unit-norm for the
      delta ops, ``beta`` uniform in [0, 2].
    """
    if op not in OPS:
        raise ValueError(f"random_inputs: op must be one of {OPS}, got {op!r}")
    rng = np.random.default_rng(seed)
    B, T, H = batch, length, heads
    if op == "linear_recurrence":
        out = {"a": _signed_gates(rng, (B, T, dk), gate_low, negative),
               "b": rng.normal(size=(B, T, dk))}
        if initial_state:
            out["h0"] = rng.normal(size=(B, dk))
        return out
    if op == "selective_scan":
        # step sizes around Mamba's initial range, decays exp(delta A) in (0.37, 1)
        out = {"u": rng.normal(size=(B, T, dk)),
               "delta": rng.uniform(1e-3, 0.5, (B, T, dk)),
               "A": -rng.uniform(0.5, 2.0, (dk, dv)),
               "Bm": rng.normal(size=(B, T, dv)), "Cm": rng.normal(size=(B, T, dv))}
        if initial_state:
            out["h0"] = rng.normal(size=(B, dk, dv))
        return out
    out = {"q": rng.normal(size=(B, T, H, dk))}
    if op == "gated_linear_attention":
        out["k"] = rng.normal(size=(B, T, H, dk)) / np.sqrt(dk)
        out["v"] = rng.normal(size=(B, T, H, dv))
        if gate not in ("head", "key"):
            raise ValueError(f"random_inputs: GLA needs gate 'head' or 'key', got {gate!r}")
        gshape = (B, T, H) if gate == "head" else (B, T, H, dk)
        out["gate"] = _signed_gates(rng, gshape, gate_low, negative)
    else:
        kshape = (B, T, H, n_h, dk) if op == "delta_product" else (B, T, H, dk)
        k = rng.normal(size=kshape)
        out["k"] = k / np.linalg.norm(k, axis=-1, keepdims=True)
        out["v"] = rng.normal(size=kshape[:-1] + (dv,))
        out["beta"] = rng.uniform(0.0, 2.0, kshape[:-1])
        if gate == "head":
            out["gate"] = _signed_gates(rng, (B, T, H), gate_low, negative)
        elif gate != "none":
            raise ValueError(f"random_inputs: delta ops take gate 'head' or 'none', got {gate!r}")
    if initial_state:
        out["initial_state"] = rng.normal(size=(B, H, dk, dv))
    return out


def run_op(op: str, inputs: dict, implementation: str, **kwargs):
    """Calls ``lrnn.ops.<op>`` on ``inputs``; returns ``(output, final_state)``.

    ``linear_recurrence`` and ``selective_scan`` have no separate final state: the last
    output is used. ``selective_scan`` runs with ``signed=True`` unless told otherwise.
    """
    if op == "linear_recurrence":
        h = ops.linear_recurrence(inputs["a"], inputs["b"], inputs.get("h0"),
                                  implementation=implementation, **kwargs)
        return h, h[:, -1]
    if op == "selective_scan":
        kwargs = {"signed": True, **kwargs}  # eigenvalues in [-1, 1]: the harder case
        y = ops.selective_scan(*(inputs[n] for n in ("u", "delta", "A", "Bm", "Cm")),
                               inputs.get("h0"), implementation=implementation, **kwargs)
        return y, y[:, -1]
    fn = getattr(ops, op)
    args = [inputs[n] for n in (("q", "k", "v", "gate") if op == "gated_linear_attention"
                                else ("q", "k", "v", "beta"))]
    kw = {n: inputs[n] for n in ("gate", "initial_state") if n in inputs}
    if op == "gated_linear_attention":
        kw.pop("gate")
    return fn(*args, **kw, implementation=implementation, **kwargs)


def _loss_and_grads(op, implementation, kwargs, inputs, cot):
    """Outputs, final state and the gradients of ``<o, cot_o> + <S, cot_S>``."""

    def loss(inp):
        o, S = run_op(op, inp, implementation, **kwargs)
        value = jnp.sum(o.astype(cot[0].dtype) * cot[0]) + jnp.sum(
            S.astype(cot[1].dtype) * cot[1])
        return value, (o, S)

    grads, (o, S) = jax.grad(loss, has_aux=True)(inputs)
    return o, S, grads


def _rel(x, ref) -> float:
    x = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    ref = np.asarray(ref, np.float64)
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(x - ref) / (den if den > 0 else 1.0))


# ------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class NumericsTable:
    """Rows of relative errors, one per (implementation, dtype, length).

    Attributes:
      rows: dicts with keys ``implementation, dtype, T, output, final_state, grad,
        grad_worst`` (the input whose gradient is worst) and ``grad_<name>`` per input.
      meta: op name, shapes, versions, date, device.
    """

    rows: list[dict]
    meta: dict

    COLUMNS = ("implementation", "dtype", "T", "output", "final_state", "grad", "grad_worst")

    def markdown(self) -> str:
        """A markdown rendering: a header with the setup, then the table."""
        m = self.meta
        head = [
            f"### numerics: `{m['op']}` vs float64 sequential",
            "",
            f"{m['date']}, {m['device']}, jax {m['jax']}; shapes {m['shapes']}; "
            f"chunk_size {m['chunk_size']}; seed {m['seed']}. Relative error "
            "`||x - ref|| / ||ref||`; grad = worst input gradient.",
            "",
            "| " + " | ".join(self.COLUMNS) + " |",
            "|" + "---|" * len(self.COLUMNS),
        ]
        for r in self.rows:
            cells = []
            for col in self.COLUMNS:
                v = r.get(col, "")
                cells.append(f"{v:.2e}" if isinstance(v, float) else str(v))
            head.append("| " + " | ".join(cells) + " |")
        return "\n".join(head) + "\n"

    def to_csv(self, path: str) -> None:
        keys = list(self.COLUMNS) + sorted(
            {k for r in self.rows for k in r} - set(self.COLUMNS))
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for r in self.rows:
                w.writerow(r)

    def plot(self, path: str | None = None):
        """Error vs length, one line per implementation and dtype; one panel per metric."""
        import matplotlib.pyplot as plt  # lazy: plotting is optional

        metrics = [m for m in METRICS if any(m in r for r in self.rows)]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6),
                                 squeeze=False)
        keys = sorted({(r["implementation"], r["dtype"]) for r in self.rows})
        for ax, metric in zip(axes[0], metrics):
            for impl, dt in keys:
                rs = sorted((r for r in self.rows
                             if (r["implementation"], r["dtype"]) == (impl, dt)),
                            key=lambda r: r["T"])
                ys = [max(r[metric], 1e-18) for r in rs]
                ax.plot([r["T"] for r in rs], ys, marker="o",
                        ls="-" if dt == "float32" else "--", label=f"{impl} {dt}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length T")
            ax.set_ylabel("relative error vs float64")
            ax.set_title(metric)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{self.meta['op']}: error vs length ({self.meta['shapes']})", fontsize=10)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig


def compare(
    op: str,
    implementations: Sequence[str] = ("sequential", "scan", "chunked"),
    lengths: Sequence[int] = (64, 256),
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    *,
    grads: bool = True,
    chunk_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    **shape_kw,
) -> NumericsTable:
    """Relative errors of each implementation against the float64 sequential reference.

    Args:
      op: one of :data:`OPS`.
      implementations: names accepted by the op's ``implementation=``.
      lengths: sequence lengths T.
      dtypes: input dtypes ("float32", "bfloat16", "float16").
      grads: also compare the gradients of every input.
      chunk_size: passed to the op.
      seed: input seed (the same inputs for every implementation and dtype).
      progress: show a tqdm bar.
      **shape_kw: forwarded to :func:`random_inputs` (batch, heads, dk, dv, n_h, gate, ...).

    Returns:
      a :class:`NumericsTable`; ``.rows`` (list of dicts), ``.markdown()``, ``.plot()``.
    """
    from tqdm.auto import tqdm

    if op not in OPS:
        raise ValueError(f"compare: op must be one of {OPS}, got {op!r}")
    kwargs = {"chunk_size": chunk_size}
    rows = []
    jobs = [(T, dt, impl) for T in lengths for dt in dtypes for impl in implementations]
    bar = tqdm(jobs, desc=f"numerics {op}", disable=not progress)
    refs = {}
    for T, dt, impl in bar:
        bar.set_postfix_str(f"T={T} {dt} {impl}")
        dtype = jnp.dtype(dt)
        # the inputs rounded to the dtype under test: the reference sees the same numbers, so
        # the errors measure the implementation's arithmetic, not the rounding of its inputs
        inputs = {k: np.asarray(jnp.asarray(v, dtype), np.float64)
                  for k, v in random_inputs(op, length=T, seed=seed, **shape_kw).items()}
        if (T, dt) not in refs:
            rng = np.random.default_rng(seed + 1)
            with _compat.enable_x64():
                x64 = {k: jnp.asarray(v, jnp.float64) for k, v in inputs.items()}
                o_shape = jax.eval_shape(
                    lambda x: run_op(op, x, "sequential", **kwargs), x64)
                cot = tuple(jnp.asarray(rng.normal(size=s.shape), jnp.float64)
                            for s in o_shape)
                fn = jax.jit(functools.partial(_loss_and_grads, op, "sequential", kwargs))
                o, S, g = fn(x64, cot)
                refs[T, dt] = (np.asarray(o), np.asarray(S),
                           {k: np.asarray(v) for k, v in g.items()},
                           tuple(np.asarray(c) for c in cot))
        o_ref, S_ref, g_ref, cot64 = refs[T, dt]
        xin = {k: jnp.asarray(v, dtype) for k, v in inputs.items()}
        row = {"implementation": impl, "dtype": dt, "T": int(T)}
        if grads:
            cot = tuple(jnp.asarray(c, jnp.float32) for c in cot64)
            fn = jax.jit(functools.partial(_loss_and_grads, op, impl, kwargs))
            o, S, g = fn(xin, cot)
            errs = {f"grad_{k}": _rel(g[k], g_ref[k]) for k in sorted(g)}
            row.update(output=_rel(o, o_ref), final_state=_rel(S, S_ref))
            worst = max(errs, key=errs.get)
            row.update(grad=errs[worst], grad_worst=worst[5:], **errs)
        else:
            o, S = jax.jit(lambda x, impl=impl: run_op(op, x, impl, **kwargs))(xin)
            row.update(output=_rel(o, o_ref), final_state=_rel(S, S_ref))
        rows.append(row)
    ex = random_inputs(op, length=1, seed=seed, **shape_kw)
    meta = {
        "op": op,
        "shapes": ", ".join(
            f"{k} {v.shape}" if k in ("h0", "initial_state")
            else f"{k} {(v.shape[0], 'T', *v.shape[2:])}" for k, v in ex.items()),
        "chunk_size": chunk_size,
        "seed": seed,
        "jax": jax.__version__,
        "device": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return NumericsTable(rows, meta)


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def _positive(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _ints(s: str) -> list[int]:
    parts = [x.strip() for x in s.split(",")]
    if not all(parts):  # "8,,4", "8,", ""
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {s!r}")
    return [_positive(x) for x in parts]


def _strs(s: str) -> list[str]:
    return [x.strip() for x in s.split(",")]  # an empty item is refused as an unknown name


def _choices(allowed):
    def parse(s: str) -> list[str]:
        vals = _strs(s)
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"{', '.join(bad) or repr(s)}: expected "
                                             f"comma-separated names from {', '.join(allowed)}")
        return vals

    return parse


DTYPES = ("float32", "bfloat16", "float16")


def main(argv: Sequence[str] | None = None) -> NumericsTable:
    """``python -m lrnn.numerics``: writes the CSV, markdown and PNG to ``--out``."""
    p = argparse.ArgumentParser(prog="python -m lrnn.numerics", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", default="delta_product", choices=OPS, help="the op to compare")
    p.add_argument("--lengths", type=_ints, default=[64, 256, 1024, 4096],
                   help="comma-separated sequence lengths")
    p.add_argument("--dtypes", type=_choices(DTYPES), default=["float32", "bfloat16"],
                   help="comma-separated input dtypes: " + ", ".join(DTYPES))
    p.add_argument("--implementations", type=_choices(ops.IMPLEMENTATIONS),
                   default=["sequential", "scan", "chunked"],
                   help="comma-separated implementations")
    p.add_argument("--out", default="numerics_out", help="output directory")
    p.add_argument("--chunk-size", type=_positive, default=64)
    p.add_argument("--batch", type=_positive, default=1)
    p.add_argument("--heads", type=_positive, default=2)
    p.add_argument("--dk", type=_positive, default=16)
    p.add_argument("--dv", type=_positive, default=16)
    p.add_argument("--n-h", type=_positive, default=2, help="Householder steps (delta_product)")
    p.add_argument("--gate", default=None, choices=["head", "key", "none"],
                   help="gate kind (default: head)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-grads", action="store_true", help="skip the gradient comparison")
    a = p.parse_args(argv)
    if a.gate is not None and a.gate not in GATES.get(a.op, ()):
        p.error(f"--gate {a.gate}: {a.op} takes "
                + (f"--gate {' or '.join(GATES[a.op])}" if a.op in GATES else "no gate"))
    shape_kw = dict(batch=a.batch, heads=a.heads, dk=a.dk, dv=a.dv, n_h=a.n_h,
                    gate=a.gate or "head")
    try:  # before the comparison: a bad --out is found at once
        os.makedirs(a.out, exist_ok=True)
    except OSError as e:
        p.error(f"--out {a.out}: {e.strerror or e}")
    table = compare(a.op, a.implementations, a.lengths, a.dtypes, grads=not a.no_grads,
                    chunk_size=a.chunk_size, seed=a.seed, **shape_kw)
    stem = os.path.join(a.out, f"numerics_{a.op}")
    table.to_csv(stem + ".csv")
    with open(stem + ".md", "w") as fh:
        fh.write(table.markdown())
    table.plot(stem + ".png")
    print(table.markdown())
    print(f"wrote {stem}.csv, {stem}.md, {stem}.png")
    return table


if __name__ == "__main__":
    main()
