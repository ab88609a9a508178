"""Train a model on a task; resumable, data-parallel, with evaluation over test lengths.

Usage::

    python -m experiments.train --task parity --model diagonal --eigen signed --preset cpu \
        --out runs/parity_signed

Writes ``OUT/config.json``, ``OUT/metrics.jsonl`` (step, loss, accuracy, lr, seconds), orbax
checkpoints in ``OUT/checkpoints/``, and at the end ``OUT/eval.json`` (accuracy per test
length, mean and scaled accuracy) and ``OUT/eval.png``. Rerunning the same command on an
``OUT`` with checkpoints resumes from the latest one; the data of step ``i`` is drawn from
``fold_in(key, i)``, so a resumed run ends with the same parameters as an uninterrupted one.

The train step follows STYLE rule 9: the model is split once into a graph definition and
state (``nnx.split``), and a pure function of the state is jitted with the state donated.
With ``--mesh data=N`` the batch is sharded over a ``data`` axis of N devices and the
parameters are replicated; the sampled data and the mean loss do not depend on N.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding

from experiments.common.mesh import check_supported, data_size, make_mesh, parse_mesh
from experiments.configs import Config, apply_preset
from experiments.models import build_model
from experiments.tasks import accuracy, get_task, masked_cross_entropy
from lrnn import parallel  # [parallel]

__all__ = [
    "make_task",
    "make_optimizer",
    "init_state",
    "make_train_step",
    "train",
    "evaluate_lengths",
    "eval_summary",
    "run",
    "parse_args",
    "main",
]


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------
def make_task(cfg: Config):
    """The task of ``cfg`` with the config's size overrides (0 keeps the task default)."""
    task = get_task(cfg.task)
    tr, te = task.train_sizes, task.test_sizes
    task.train_sizes = (cfg.train_min or tr[0], cfg.train_max or tr[1])
    task.test_sizes = (cfg.test_min or te[0], cfg.test_max or te[1])
    return task


def make_optimizer(cfg: Config):
    """AdamW with linear warmup then cosine decay to ``end_lr_ratio * lr``, after clipping."""
    warmup = min(cfg.warmup, max(cfg.steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1),
        end_value=cfg.lr * cfg.end_lr_ratio,
    )
    parts = [optax.clip_by_global_norm(cfg.clip)] if cfg.clip > 0 else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    return optax.chain(*parts), schedule


def batch_sharding(mesh):
    """Sharding of a batch array: leading (batch) axis over ``data``.

    Extension point for sequence sharding: a ``seq`` axis would shard axis 1 here and the
    model would call ``lrnn.parallel`` for its recurrences.
    """
    if mesh is None:
        return None
    return NamedSharding(mesh, jax.P("data"))


# [parallel] begin: time sharded over the mesh axis "seq"
def seq_size(mesh) -> int:
    """Devices on the ``seq`` mesh axis (1 without one)."""
    return 1 if mesh is None or "seq" not in mesh.axis_names else mesh.shape["seq"]


def pad_time(arrays, multiple: int):
    """Pads ``[B, T]`` arrays with zeros at the end of time to a multiple of ``multiple``.

    The models are causal, so the padding changes no output at a real position, and the
    padded positions have mask 0: the loss and accuracy are those of the unpadded batch.
    """
    t = arrays[0].shape[1]
    extra = -t % multiple
    if not extra:
        return arrays
    return tuple(jnp.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2)) for a in arrays)


def model_forward(model, inputs, mesh):
    """``model(inputs)``; with a ``seq`` axis, inside ``lrnn.parallel.sequence_sharded``.

    Batch over ``data`` (if the mesh has it), time over ``seq``: the mixers pass the axis to
    their ops and the causal convolutions exchange a halo (``lrnn.parallel``).
    """
    if seq_size(mesh) == 1:
        return model(inputs)
    batch_axis = "data" if "data" in mesh.axis_names else None
    # check_vma=False: the Pallas kernels (implementation "pallas" / "auto" on GPU and TPU)
    # run per shard, and jax's Pallas interpreter cannot carry shard_map's varying-axes
    # types; the sharded run's equality with the single-device run is tested instead.
    fn = parallel.sequence_sharded(lambda x: model(x), mesh, "seq", batch_axis=batch_axis,
                                   pass_axis_name=False, check_vma=False)
    return fn(inputs)
# [parallel] end


def init_state(cfg: Config, task, mesh=None):
    """Model graph, optimiser and the initial train state ``{params, opt, step}`` (+ rest)."""
    model = build_model(cfg, task, rngs=nnx.Rngs(cfg.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, schedule = make_optimizer(cfg)
    state = {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    if mesh is not None:
        rep = NamedSharding(mesh, jax.P())
        state = jax.device_put(state, rep)
        rest = jax.device_put(rest, rep)
    return graphdef, rest, state, tx, schedule


def make_train_step(cfg: Config, task, graphdef, tx, schedule, mesh=None):
    """A jitted ``(state, rest, data_key) -> (state, metrics)``, state donated."""
    shard = batch_sharding(mesh)

    def step_fn(state, rest, data_key):
        i = state["step"]
        inputs, labels, mask = task.train_batch(jax.random.fold_in(data_key, i), cfg.batch)
        inputs, labels, mask = pad_time((inputs, labels, mask), seq_size(mesh))  # [parallel]
        if shard is not None:
            inputs, labels, mask = (
                jax.lax.with_sharding_constraint(t, shard) for t in (inputs, labels, mask)
            )

        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest)
            logits = model_forward(model, inputs, mesh)  # [parallel]
            return masked_cross_entropy(logits, labels, mask), accuracy(logits, labels, mask)

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "opt": opt, "step": i + 1}
        return new, {"loss": loss, "accuracy": acc, "lr": schedule(i)}

    return jax.jit(step_fn, donate_argnums=0)


def _manager(out: Path, keep: int) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager((out / "checkpoints").absolute(), options=opts)


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_latest(out: Path, state, keep: int = 2):
    """``(state, step)`` from the latest checkpoint in ``out/checkpoints`` (or ``(state, 0)``)."""
    mngr = _manager(out, keep)
    step = mngr.latest_step()
    if step is None:
        mngr.close()
        return state, 0
    state = mngr.restore(step, args=ocp.args.StandardRestore(_abstract(state)))
    mngr.close()
    return state, int(step)


def _truncate_metrics(path: Path, step: int) -> float:
    """Drop metric lines after ``step`` (a resumed run rewrites them); return last seconds."""
    if not path.exists():
        return 0.0
    keep, seconds = [], 0.0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["step"] <= step:
            keep.append(line)
            seconds = rec.get("seconds", seconds)
    path.write_text("".join(k + "\n" for k in keep))
    return seconds


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------
def train(cfg: Config, *, stop_at: int | None = None):
    """Train (resuming from ``cfg.out`` if it has checkpoints).

    Args:
      cfg: the run.
      stop_at: stop after this many completed steps without saving them (the tests use it to
        simulate a run killed midway; a rerun resumes from the last periodic checkpoint).

    Returns:
      ``(model, task)``: the trained model (merged from the final state) and the task.
    """
    if not cfg.out:
        raise ValueError("cfg.out (--out DIR) is required")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    axes = parse_mesh(cfg.mesh)
    check_supported(axes)
    mesh = make_mesh(cfg.mesh)
    if cfg.batch % data_size(mesh):
        raise ValueError(f"batch={cfg.batch} must be divisible by the data axis {data_size(mesh)}")
    task = make_task(cfg)
    if seq_size(mesh) > 1 and task.kind != "tokens":  # [parallel]
        raise ValueError(f"--mesh seq=...: sequence sharding needs a token task; {task.name!r} "
                         f"is {task.kind!r}")
    lead = jax.process_index() == 0  # multi-host: one process writes logs; all checkpoint
    if lead:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    graphdef, rest, state, tx, schedule = init_state(cfg, task, mesh)
    state, start = restore_latest(out, state, cfg.keep_checkpoints)
    metrics_path = out / "metrics.jsonl"
    t_offset = _truncate_metrics(metrics_path, start) if lead else 0.0
    step_fn = make_train_step(cfg, task, graphdef, tx, schedule, mesh)
    data_key = jax.random.key(cfg.seed + 1)
    mngr = _manager(out, cfg.keep_checkpoints)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and lead),
               desc=f"{cfg.task}/{cfg.model}")
    window: list[dict] = []
    t0 = time.perf_counter()
    try:
        with open(metrics_path if lead else os.devnull, "a") as mf:
            for i in range(start, cfg.steps):
                state, m = step_fn(state, rest, data_key)
                window.append(m)
                done = i + 1
                if done % cfg.log_every == 0 or done == cfg.steps:
                    avg = {k: float(np.mean([float(w[k]) for w in window]))
                           for k in ("loss", "accuracy")}
                    rec = {"step": done, **avg, "lr": float(m["lr"]),
                           "seconds": round(t_offset + time.perf_counter() - t0, 3)}
                    mf.write(json.dumps(rec) + "\n")
                    mf.flush()
                    window = []
                    bar.set_postfix(loss=f"{avg['loss']:.3f}", acc=f"{avg['accuracy']:.3f}")
                bar.update(1)
                if done % cfg.ckpt_every == 0 or done == cfg.steps:
                    mngr.save(done, args=ocp.args.StandardSave(state), force=True)
                if stop_at is not None and done >= stop_at:
                    break
    finally:
        mngr.wait_until_finished()
        mngr.close()
        bar.close()
    model = nnx.merge(graphdef, state["params"], rest)
    return model, task


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------
def _bucket(n: int, quantum: int = 64) -> int:
    return int(math.ceil(n / quantum) * quantum)


def evaluate_lengths(model, task, lengths, *, per_length: int = 32, batch: int = 512,
                     seed: int = 0, progress: bool = False) -> list[float]:
    """Accuracy of ``model`` at each length (or image size) in ``lengths``.

    Token tasks: ``per_length`` examples per length, packed into batches of ``batch``
    sequences padded to a multiple of 64 tokens (few compilations for many lengths).
    Image tasks: ``per_length`` images per size.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    lengths = [int(n) for n in lengths]

    @jax.jit
    def correct(params, rest, inputs, labels, mask):
        logits = nnx.merge(graphdef, params, rest)(inputs)
        hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * mask
        axes = tuple(range(1, hit.ndim))
        return hit.sum(axes) / jnp.maximum(mask.sum(axes), 1.0)

    key = jax.random.key(seed + 2)
    hits = np.zeros(len(lengths))
    if task.kind != "tokens":
        sample = jax.jit(task.sample, static_argnums=(1, 2))
        for j, size in enumerate(lengths):
            done = 0
            while done < per_length:
                n = min(batch, per_length - done)
                x, y, m = sample(jax.random.fold_in(key, j * 100003 + done), n, size)
                hits[j] += float(np.sum(correct(params, rest, x, y, m)))
                done += n
        return list(hits / per_length)

    sample = jax.jit(task.sample_lengths, static_argnums=2)
    order = np.repeat(np.arange(len(lengths)), per_length)
    order = order[np.argsort(np.asarray(lengths)[order], kind="stable")]
    from tqdm.auto import tqdm

    starts = range(0, len(order), batch)
    for b, s in enumerate(tqdm(starts, disable=not progress, desc="eval", leave=False)):
        idx = order[s : s + batch]
        n = len(idx)
        idx_p = np.concatenate([idx, np.full(batch - n, idx[-1])]) if n < batch else idx
        lens = np.asarray(lengths)[idx_p]
        T = min(_bucket(int(lens.max())), max(lengths))  # >= every length in the batch
        x, y, m = sample(jax.random.fold_in(key, b), jnp.asarray(lens, jnp.int32), T)
        c = np.asarray(correct(params, rest, x, y, m))[:n]
        np.add.at(hits, idx, c)
    return list(hits / per_length)


def eval_summary(lengths, accs, chance: float) -> dict:
    """The eval.json record."""
    mean = float(np.mean(accs))
    return {
        "lengths": [int(n) for n in lengths],
        "accuracy": [round(float(a), 6) for a in accs],
        "mean_accuracy": round(mean, 6),
        "scaled_accuracy": round((mean - chance) / (1.0 - chance), 6),
    }


def plot_eval(summary: dict, task, path: Path, title: str = "") -> None:
    """Accuracy vs length, with the training range shaded and chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(summary["lengths"], summary["accuracy"], lw=1.2)
    lo, hi = task.train_sizes
    ax.axvspan(lo, hi, color="0.9", label="train lengths")
    ax.axhline(task.chance, ls="--", color="0.5", label="chance")
    ax.set_xlabel("length" if task.kind == "tokens" else "size")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or f"mean {summary['mean_accuracy']:.3f}, "
                 f"scaled {summary['scaled_accuracy']:.3f}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: Config, *, stop_at: int | None = None) -> dict | None:
    """Train, then evaluate over the task's test lengths and write eval.json / eval.png."""
    model, task = train(cfg, stop_at=stop_at)
    if stop_at is not None and stop_at < cfg.steps:
        return None
    lengths = task.eval_sizes()
    accs = evaluate_lengths(model, task, lengths, per_length=cfg.eval_per_length,
                            batch=cfg.eval_batch, seed=cfg.seed, progress=cfg.progress)
    summary = eval_summary(lengths, accs, task.chance)
    out = Path(cfg.out)
    if jax.process_index() != 0:
        return summary
    (out / "eval.json").write_text(json.dumps(summary) + "\n")
    plot_eval(summary, task, out / "eval.png", title=f"{cfg.task} / {cfg.model} ({cfg.eigen}): "
              f"mean {summary['mean_accuracy']:.3f}")
    return summary


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> Config:
    """``--preset`` (applied for the given task / model) first, then every other flag."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default="")
    pre.add_argument("--task", default=Config.task)
    pre.add_argument("--model", default=Config.model)
    known, _ = pre.parse_known_args(argv)
    # Fail fast on unknown names, listing the valid ones.
    from experiments.models import MODELS, model_names

    get_task(known.task)
    if known.model not in MODELS and known.model not in model_names():
        raise ValueError(f"unknown model {known.model!r}; valid models: {', '.join(model_names())}")
    base = apply_preset(Config(task=known.task, model=known.model), known.preset)
    return tyro.cli(Config, default=base, args=argv, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> None:
    parallel.initialize_from_env()  # [parallel] multi-host runs (see lrnn.parallel)
    try:
        cfg = parse_args(argv)
        if not cfg.out:
            raise ValueError("--out DIR is required")
    except ValueError as e:
        sys.exit(f"error: {e}")
    summary = run(cfg)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
