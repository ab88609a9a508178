"""Train a model on a task; resumable, data-parallel, with evaluation over test lengths.

Usage::

    python -m experiments.train --task parity --model diagonal --eigen signed --preset cpu \
        --out runs/parity_signed

Writes ``OUT/config.json``, ``OUT/metrics.jsonl`` (step, loss, accuracy, lr, seconds, and
``val_accuracy`` at validations), orbax checkpoints in ``OUT/checkpoints/``, and at the end
``OUT/eval.json`` (accuracy per test length with the number of sequences and 95% Wilson
intervals, mean and scaled accuracy; for group word problems also the fraction of sequences
correct up to each length) and ``OUT/eval.png``. Rerunning the same command on an ``OUT`` with
checkpoints resumes from the latest one that restores (one that does not is moved to
``OUT/checkpoints_unreadable/`` with a warning); the data of step ``i`` is drawn from
``fold_in(key, i)``, so a resumed run ends with the same parameters as an uninterrupted one.
A different config on an existing ``OUT`` is refused before anything is written, naming the
fields that differ; ``config.json`` is written once and never overwritten. Every flag is
checked before anything is written too; on the command line a bad one (an unknown name, a
size out of range, a model that cannot be built) ends with one ``error:`` line, exit status 2.

Seed ensembles: ``--seeds 0 1 2 --out D`` trains the three seeds in one process as one vmapped
model (parameters, optimiser states and data keys stacked) and writes ``D/seed_0``, ... , each a
complete single run (its own config.json with its seed) equal to ``--seed s --out D/seed_s`` up
to float rounding. The ensemble resumes like a single run.

The train step follows STYLE rule 9: the model is split once into a graph definition and
state (``nnx.split``), and a pure function of the state is jitted with the state donated.
With ``--mesh data=N`` the batch is sharded over a ``data`` axis of N devices and the
parameters are replicated; the sampled data and the mean loss do not depend on N.
"""

from __future__ import annotations

import argparse
import contextlib
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

from experiments.common.cli import UsageError, fail, tyro_cli
from experiments.common.flat import ParamLayout
from experiments.common.mesh import check_supported, data_size, make_mesh, parse_mesh
from experiments.configs import Config, apply_preset
from experiments.models import build_model
from experiments.tasks import accuracy, get_task, masked_cross_entropy
from lrnn import parallel  # [parallel]

__all__ = [
    "seed_configs",
    "check_config",
    "make_task",
    "make_optimizer",
    "init_state",
    "init_ensemble",
    "data_keys",
    "train_batch",
    "make_train_step",
    "train",
    "Evaluator",
    "evaluate",
    "evaluate_lengths",
    "eval_summary",
    "per_token_summary",
    "wilson",
    "run",
    "parse_args",
    "main",
]


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _usage_errors(prefix: str = ""):
    """ValueErrors of the block, which checks a config or a run directory before anything is
    written, re-raised as UsageError (the CLIs report those as one line)."""
    try:
        yield
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(prefix + str(e)) from e


def seed_configs(cfg: Config) -> list[Config]:
    """The single runs of ``cfg``: itself, or with ``seeds`` one per seed in ``OUT/seed_<s>``
    (each a complete single-run config: its own seed, no ``seeds``)."""
    if not cfg.seeds:
        return [cfg]
    return [dataclasses.replace(cfg, seed=int(s), seeds=(), out=str(Path(cfg.out) / f"seed_{s}"))
            for s in cfg.seeds]


def make_task(cfg: Config):
    """The task of ``cfg`` with the config's size overrides (0 keeps the task default)."""
    task = get_task(cfg.task, cfg.task_format)
    tr, te = task.train_sizes, task.test_sizes
    if cfg.length:
        # per-token tasks: words of length L, scored at every position 1..L
        first = 1 if getattr(task, "per_token", False) else cfg.length
        task.train_sizes, task.test_sizes = (cfg.length, cfg.length), (first, cfg.length)
    else:
        task.train_sizes = (cfg.train_min or tr[0], cfg.train_max or tr[1])
        task.test_sizes = (cfg.test_min or te[0], cfg.test_max or te[1])
    for name, (lo, hi) in (("train", task.train_sizes), ("test", task.test_sizes)):
        if not 1 <= lo <= hi:
            raise ValueError(f"{name} lengths must satisfy 1 <= min <= max, got {lo}..{hi} "
                             f"(--{name}-min / --{name}-max)")
    if cfg.holdout or cfg.aux_batch:
        if not getattr(task, "per_token", False):
            raise ValueError(f"--holdout and --aux-batch need a group word problem, not "
                             f"task {cfg.task!r}")
        task.holdout = cfg.holdout
        if cfg.holdout:
            lengths = set(range(task.train_sizes[0], task.train_sizes[1] + 1))
            lengths |= {task.test_sizes[1]} | ({cfg.aux_length} if cfg.aux_batch else set())
            task.check_split(sorted(lengths))
    if cfg.val_every and task.kind != "tokens":
        raise ValueError(f"--val-every needs a token task; {task.name!r} is {task.kind!r}")
    return task


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_config(cfg: Config) -> None:
    """Checks the fields the training loop and the model read before anything is built or
    written (a field a model does not use is checked too: a value out of range is a typo)."""
    positive = ("steps", "batch", "log_every", "ckpt_every", "keep_checkpoints",
                "eval_per_length", "eval_batch", "val_size", "chunk_size",
                "layers", "d_model", "heads", "n_h", "d_state", "expand", "slice_inputs",
                "block_size", "rank", "patch_size")
    nonnegative = ("train_samples", "aux_batch", "val_every", "length", "train_min",
                   "train_max", "test_min", "test_max", "head_dim", "conv", "slice_state",
                   "mlp_ratio", "warmup")
    from lrnn.ops import IMPLEMENTATIONS
    from lrnn.transitions import STRUCTURES

    if cfg.implementation not in IMPLEMENTATIONS:
        raise ValueError(f"--implementation must be one of {', '.join(IMPLEMENTATIONS)}, got "
                         f"{cfg.implementation!r}")
    for name in positive:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{_flag(name)} must be a positive integer, got {v!r}")
    for name in nonnegative:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{_flag(name)} must be an integer >= 0, got {v!r}")
    if cfg.eigen not in ("unit", "signed"):
        raise ValueError(f"--eigen must be 'unit' or 'signed', got {cfg.eigen!r}")
    if cfg.structure not in STRUCTURES:
        raise ValueError(f"--structure must be one of {', '.join(STRUCTURES)}, got "
                         f"{cfg.structure!r}")
    # ``not x >= 0`` also refuses nan
    for name in ("lr",):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{_flag(name)} must be > 0, got {getattr(cfg, name)}")
    for name in ("end_lr_ratio", "weight_decay", "clip", "slice_reg"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{_flag(name)} must be >= 0, got {getattr(cfg, name)}")
    for name in ("b1", "b2", "dropout", "holdout"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"{_flag(name)} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.train_samples and cfg.train_samples < cfg.batch:
        raise ValueError(f"--train-samples {cfg.train_samples} must be at least the batch "
                         f"({cfg.batch}) or 0 (fresh data)")
    if cfg.aux_batch and cfg.aux_length < 1:
        raise ValueError(f"--aux-length must be >= 1, got {cfg.aux_length}")
    if not 0.0 <= cfg.early_stop <= 1.0:
        raise ValueError(f"--early-stop must be a validation accuracy in [0, 1], got "
                         f"{cfg.early_stop}")
    if cfg.early_stop and not cfg.val_every:
        raise ValueError("--early-stop needs --val-every (steps between validations)")
    if cfg.dropout and "seq" in cfg.mesh:
        raise ValueError("--dropout with a seq mesh axis would repeat one mask on every time "
                         "shard; drop one of them")
    if cfg.seeds:
        if len(set(cfg.seeds)) != len(cfg.seeds):
            raise ValueError(f"--seeds has repeated seeds: {list(cfg.seeds)}")
        if cfg.mesh:
            raise ValueError("--seeds trains the ensemble on one device; drop --mesh")


def _decays(cfg: Config):
    """``path -> bool``: whether a parameter gets weight decay (not if a part of its path is
    in ``cfg.no_decay``)."""
    exempt = set(cfg.no_decay)
    return lambda path: not exempt & {_key_name(k) for k in path}


def make_optimizer(cfg: Config, layout: ParamLayout | None = None):
    """AdamW with linear warmup then cosine decay to ``end_lr_ratio * lr``, after clipping.

    Parameters whose path contains a name in ``cfg.no_decay`` get no weight decay. With a
    ``layout`` the optimiser acts on the packed parameters (``experiments.common.flat``).
    """
    warmup = min(cfg.warmup, max(cfg.steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1),
        end_value=cfg.lr * cfg.end_lr_ratio,
    )
    mask = None
    if cfg.no_decay:
        if layout is not None:
            mask = layout.decay_mask()
        else:
            decays = _decays(cfg)

            def mask(params):
                return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)

    parts = [optax.clip_by_global_norm(cfg.clip)] if cfg.clip > 0 else []
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                             mask=mask))
    return optax.chain(*parts), schedule


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def batch_sharding(mesh):
    """Sharding of a batch array: leading (batch) axis over ``data`` (time over ``seq`` is
    handled by :func:`model_forward`)."""
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


def model_forward(model, inputs, mesh, dropout_key=None):
    """``model(inputs)``; with a ``seq`` axis, inside ``lrnn.parallel.sequence_sharded``.

    Batch over ``data`` (if the mesh has it), time over ``seq``: the mixers pass the axis to
    their ops and the causal convolutions exchange a halo (``lrnn.parallel``).
    """
    kw = {} if dropout_key is None else {"dropout_key": dropout_key}
    if seq_size(mesh) == 1:
        return model(inputs, **kw)
    batch_axis = "data" if "data" in mesh.axis_names else None
    # check_vma=False: the Pallas kernels (implementation "pallas" / "auto" on GPU and TPU)
    # run per shard, and jax's Pallas interpreter cannot carry shard_map's varying-axes
    # types; the sharded run's equality with the single-device run is tested instead.
    fn = parallel.sequence_sharded(lambda x: model(x, **kw), mesh, "seq", batch_axis=batch_axis,
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


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def init_ensemble(cfgs: list[Config], task):
    """:func:`init_state` of each seed's config, stacked along a leading seed axis."""
    parts = [init_state(c, task) for c in cfgs]
    graphdef, _, _, tx, schedule = parts[0]
    return graphdef, _stack([p[1] for p in parts]), _stack([p[2] for p in parts]), tx, schedule


def data_keys(cfgs: list[Config]) -> jax.Array:
    """The data keys of an ensemble's seeds, stacked (each the single run's key)."""
    return jnp.stack([jax.random.key(c.seed + 1) for c in cfgs])


_VAL_LENGTHS = 20261202  # seed of the validation lengths
# fold_in offsets of the keys that are not a step's data key (steps never reach them)
_POOL, _DROPOUT, _AUX = 2**31 - 1, 2**31 - 2, 2**31 - 3


def train_batch(cfg: Config, task, data_key, step):
    """The training batch of ``step``: ``task.train_batch`` from ``fold_in(data_key, step)``,
    or with ``train_samples = N`` the step's slice of a fixed set of N sequences, visited in a
    new random order each epoch (example ``j`` of the set is drawn from its own key)."""
    key = jax.random.fold_in(data_key, step)
    if not cfg.train_samples:
        return task.train_batch(key, cfg.batch)
    N, B = cfg.train_samples, cfg.batch
    pool = jax.random.fold_in(data_key, _POOL)
    g = step * B + jnp.arange(B)  # global example counter
    e0 = (step * B) // N
    orders, examples = jax.random.fold_in(pool, 0), jax.random.fold_in(pool, 1)
    perm = lambda e: jax.random.permutation(jax.random.fold_in(orders, e), N)
    idx = jnp.where(g // N == e0, perm(e0)[g % N], perm(e0 + 1)[g % N])
    keys = jax.vmap(lambda j: jax.random.fold_in(examples, j))(idx)
    x, y, m = jax.vmap(lambda k: task.train_batch(k, 1))(keys)
    return x[:, 0], y[:, 0], m[:, 0]


def make_train_step(cfg: Config, task, graphdef, tx, schedule, mesh=None, *, ensemble: int = 0,
                    layout: ParamLayout | None = None):
    """A jitted ``(state, rest, data_key) -> (state, metrics)``, state donated.

    With ``ensemble = S`` the step is vmapped over S stacked seeds:
    ``(state, rest, data_keys [S], active [S] bool) -> (state, metrics [S])``; a seed that is not
    active (stopped early) keeps its state. With a ``layout`` the state's parameters (and
    ``tx``'s moments) are packed vectors (:meth:`ParamLayout.pack_state`).
    """
    shard = batch_sharding(mesh)
    unpack = (lambda p: p) if layout is None else layout.unpack

    def step_fn(state, rest, data_key):
        i = state["step"]
        inputs, labels, mask = train_batch(cfg, task, data_key, i)
        n_main = inputs.shape[0]
        if cfg.aux_batch:  # SLiCE's A5 protocol: short training words, their loss added
            k_aux = jax.random.fold_in(jax.random.fold_in(data_key, _AUX), i)
            lens = jnp.full((cfg.aux_batch,), cfg.aux_length, jnp.int32)
            aux = task.sample_lengths(k_aux, lens, max(inputs.shape[1], cfg.aux_length),
                                      side="train")
            T = aux[0].shape[1]
            main = pad_time((inputs, labels, mask), T) if T > inputs.shape[1] else (
                inputs, labels, mask)
            inputs, labels, mask = (jnp.concatenate([a, b]) for a, b in zip(main, aux))
        inputs, labels, mask = pad_time((inputs, labels, mask), seq_size(mesh))  # [parallel]
        if shard is not None:
            inputs, labels, mask = (
                jax.lax.with_sharding_constraint(t, shard) for t in (inputs, labels, mask)
            )
        drop = (jax.random.fold_in(jax.random.fold_in(data_key, _DROPOUT), i)
                if cfg.dropout else None)

        def loss_fn(params):
            model = nnx.merge(graphdef, unpack(params), rest)
            logits = model_forward(model, inputs, mesh, drop)  # [parallel]
            lg, lb, mk = logits[:n_main], labels[:n_main], mask[:n_main]
            loss = masked_cross_entropy(lg, lb, mk)
            if cfg.aux_batch:
                loss = loss + masked_cross_entropy(logits[n_main:], labels[n_main:],
                                                   mask[n_main:])
            if cfg.slice_reg:
                loss = loss + cfg.slice_reg * model.penalty()
            return loss, accuracy(lg, lb, mk)

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "opt": opt, "step": i + 1}
        return new, {"loss": loss, "accuracy": acc, "lr": schedule(i)}

    if not ensemble:
        return jax.jit(step_fn, donate_argnums=0)

    def ens_fn(state, rest, data_key, active):
        new, m = step_fn(state, rest, data_key)
        new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)
        return new, m

    return jax.jit(jax.vmap(ens_fn), donate_argnums=0)


def _manager(out: Path, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
    """The checkpoint manager of ``out/checkpoints``; ``read_only`` creates, saves and deletes
    nothing (evaluating a run only reads it)."""
    path = (out / "checkpoints").absolute()
    if not read_only:
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        return ocp.CheckpointManager(path, options=opts)
    from absl import logging as absl_logging

    opts = ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=0, create=False,
                                        read_only=True)
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns that it is read-only
    try:
        return ocp.CheckpointManager(path, options=opts)
    finally:
        absl_logging.set_verbosity(level)


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _why(err: Exception) -> str:
    text = str(err).splitlines()[0][:160] if str(err) else ""
    return f"{type(err).__name__}: {text}"


def _set_aside(out: Path, step: int, err: Exception, restored: int) -> None:
    """Moves checkpoint ``step`` of ``out``, which did not restore (while the older
    ``restored`` did), to ``out/checkpoints_unreadable/`` (kept, not deleted, and out of the
    way of the resumed run's own save at that step), and says so."""
    aside = out / "checkpoints_unreadable"
    aside.mkdir(exist_ok=True)
    dest = aside / str(step)
    n = 1
    while dest.exists():
        dest, n = aside / f"{step}.{n}", n + 1
    (out / "checkpoints" / str(step)).rename(dest)
    print(f"warning: {out.name}: checkpoint {step} does not restore ({_why(err)}); moved to "
          f"{dest}; resuming from checkpoint {restored}", file=sys.stderr)


def _no_checkpoint_restores(where, failed) -> UsageError:
    tried = "; ".join(f"{name} {step}: {_why(e)}" for name, step, e in failed[:4])
    return UsageError(f"{where}: no checkpoint restores ({tried}); nothing was moved or "
                      "written: is this the code and config the run was made with?")


def restore_latest(out: Path, state, keep: int = 2, *, read_only: bool = False):
    """``(state, step)`` from the newest checkpoint in ``out/checkpoints`` that restores (or
    ``(state, 0)`` without any). Checkpoints newer than it that do not restore (truncated or
    corrupted: a kill during the write, a full disk) are moved to
    ``out/checkpoints_unreadable/`` with a warning (``read_only``: only the warning; nothing
    in ``out`` is created or moved). If none restores, UsageError and nothing is moved (code
    or config that no longer matches the checkpoints, not a damaged file)."""
    if read_only and not _checkpoint_steps(out):
        return state, 0
    mngr = _manager(out, keep, read_only=read_only)
    steps = sorted(mngr.all_steps(), reverse=True)
    failed = []
    for step in steps:
        try:
            restored = mngr.restore(step, args=ocp.args.StandardRestore(_abstract(state)))
        except Exception as e:  # noqa: BLE001 - any failure to read it: try the one before
            failed.append((out.name, int(step), e))
            continue
        mngr.close()
        for _, bad, e in failed:
            if read_only:
                print(f"warning: {out.name}: checkpoint {bad} does not restore ({_why(e)}); "
                      f"using checkpoint {step}", file=sys.stderr)
            else:
                _set_aside(out, bad, e, int(step))
        return restored, int(step)
    mngr.close()
    if failed:
        raise _no_checkpoint_restores(out, failed)
    return state, 0


def _checkpoint_steps(out: Path) -> set[int]:
    """The steps of the checkpoints in ``out/checkpoints`` (read without creating anything)."""
    d = out / "checkpoints"
    return {int(p.name) for p in d.iterdir() if p.name.isdigit()} if d.is_dir() else set()


def _common_step(outs: list[Path]) -> int:
    """The newest checkpoint step every seed of an ensemble has (0: none has any).

    Seeds with checkpoints beside seeds without any in common (a seed added to a trained
    ensemble) are refused: training all of them again would drop the trained seeds' records.
    """
    steps = [_checkpoint_steps(o) for o in outs]
    if not any(steps):
        return 0
    common = set.intersection(*steps)
    if not common:
        desc = ", ".join(f"{o.name}: {sorted(s) or 'none'}" for o, s in zip(outs, steps))
        raise ValueError(f"the ensemble's seeds have no checkpoint step in common ({desc}); "
                         "train the new seeds in a directory of their own")
    return max(common)


def _restore_ensemble(outs: list[Path], state, keep: int):
    """``(stacked state, step)`` from the newest step every seed has a checkpoint of.

    Checkpoints newer than that step (a kill between the seeds' saves leaves some) are
    deleted, so the resumed run writes them again. A seed's checkpoint that does not restore
    makes it try the next older common step; once one restores, the unreadable ones are set
    aside (``_set_aside``); if none does, ValueError and nothing is moved.
    """
    step = _common_step(outs)  # refuses seeds without any common step
    if not step:
        return state, 0
    mngrs = [_manager(out, keep) for out in outs]
    common = sorted(set.intersection(*(set(m.all_steps()) for m in mngrs)), reverse=True)
    failed = []
    for step in common:
        parts = []
        for s, (out, mngr) in enumerate(zip(outs, mngrs)):
            try:
                parts.append(mngr.restore(step, args=ocp.args.StandardRestore(
                    _abstract(_unstack(state, s)))))
            except Exception as e:  # noqa: BLE001 - unreadable: try the common step before
                failed.append((out.name, int(step), e))
                break
        else:
            for m in mngrs:
                m.close()
            for name, bad, e in failed:  # kept aside, then the newer ones are written again
                _set_aside(outs[[o.name for o in outs].index(name)], bad, e, int(step))
            for out in outs:  # a kill between the seeds' saves leaves newer ones
                mngr = _manager(out, keep)
                for newer in sorted(x for x in mngr.all_steps() if x > step):
                    mngr.delete(newer)
                mngr.close()
            return _stack(parts), int(step)
    for m in mngrs:
        m.close()
    raise _no_checkpoint_restores(outs[0].parent, failed)


def _read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl; a torn last line (a kill during a write) is dropped."""
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    out = []
    for j, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if j == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {j + 1} is not JSON (only a torn last line is "
                             "dropped on resume)") from None
    return out


def _truncate_metrics(path: Path, step: int, write: bool = True) -> tuple[float, bool]:
    """Drop metric lines after ``step`` (a resumed run rewrites them; only with ``write``);
    return the last seconds and whether the run had stopped early by then."""
    if not path.exists():
        return 0.0, False
    keep = [r for r in _read_metrics(path) if r["step"] <= step]
    if write:
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    seconds = keep[-1].get("seconds", 0.0) if keep else 0.0
    return seconds, any(r.get("early_stop") for r in keep)


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------
DISPLAY_ONLY = ("progress",)  # fields a resume may change: they touch no file of the run


def _check_writable(out: Path) -> None:
    """ValueError unless ``out`` is a directory, or can be made one, that we may write."""
    p = out.absolute()
    while not p.exists() and p != p.parent:
        if p.is_symlink():  # a dangling link
            raise ValueError(f"--out {out}: {p} is a broken symbolic link")
        p = p.parent
    if not p.is_dir():
        raise ValueError(f"--out {out}: {p} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {p} is not writable")


def check_same_run(cfg: Config, out: Path) -> None:
    """Refuses to train into ``out`` if it holds a run with another config (ValueError naming
    the fields that differ); the same config resumes (``DISPLAY_ONLY`` fields may differ). A
    field the stored config lacks (written by older code) counts as its default."""
    path = out / "config.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e}); this directory's run cannot be checked: "
                         "use another --out") from e
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as stored
    defaults = json.loads(json.dumps(dataclasses.asdict(Config())))
    diff = [k for k in sorted(set(old) | set(new)) if k not in DISPLAY_ONLY
            and old.get(k, defaults.get(k)) != new.get(k, defaults.get(k))]
    if diff:
        shown = ", ".join(f"{k} {old.get(k, defaults.get(k))!r} -> {new.get(k)!r}"
                          for k in diff[:8])
        more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
        raise ValueError(f"{out} holds a run with another config ({shown}{more}); rerun with "
                         "its flags to resume it, or choose another --out")


def train(cfg: Config, *, stop_at: int | None = None):
    """Train (resuming from ``cfg.out`` if it has checkpoints).

    With ``cfg.seeds`` the seeds train at once as one vmapped model, each writing the
    complete single run ``OUT/seed_<s>`` (equal to ``--seed s`` up to float rounding).

    Args:
      cfg: the run.
      stop_at: stop after this many completed steps without saving them (the tests use it to
        simulate a run killed midway; a rerun resumes from the last periodic checkpoint).

    Returns:
      ``(model, task)``: the trained model (merged from the final state) and the task; with
      ``cfg.seeds``, ``(models, task)`` with one model per seed.
    """
    runs = seed_configs(cfg)
    stacked = bool(cfg.seeds)
    outs = [Path(r.out) for r in runs]
    # Nothing is written before these checks pass; what they refuse is a UsageError.
    with _usage_errors():
        if not cfg.out:
            raise ValueError("cfg.out (--out DIR) is required")
        check_config(cfg)
        axes = parse_mesh(cfg.mesh)
        check_supported(axes)
        mesh = make_mesh(cfg.mesh)
        if cfg.batch % data_size(mesh):
            raise ValueError(f"--batch {cfg.batch} must be divisible by the data axis "
                             f"{data_size(mesh)}")
        task = make_task(cfg)
        if seq_size(mesh) > 1 and task.kind != "tokens":  # [parallel]
            raise ValueError(f"--mesh seq=...: sequence sharding needs a token task; "
                             f"{task.name!r} is {task.kind!r}")
    with _usage_errors("building the model: "):  # a bad shape fails before any write
        setup = Setup(cfg, task, mesh)
    with _usage_errors():
        if stacked:
            _common_step(outs)  # refuses seeds without a common checkpoint before any write
        for r, out in zip(runs, outs):
            _check_writable(out)
            check_same_run(r, out)  # before anything is written, for every seed
    lead = jax.process_index() == 0  # multi-host: one process writes logs; all checkpoint
    for r, out in zip(runs, outs):
        out.mkdir(parents=True, exist_ok=True)
        if lead and not (out / "config.json").exists():  # never overwritten
            # whole or absent: a kill mid-write must not leave a torn config.json (which
            # check_same_run would refuse for good)
            tmp = out / ".config.json.tmp"
            tmp.write_text(json.dumps(dataclasses.asdict(r), indent=2) + "\n")
            os.replace(tmp, out / "config.json")
    state, start = setup.restore()
    rest, layout = setup.rest, setup.layout
    mpaths = [out / "metrics.jsonl" for out in outs]
    resumed = [_truncate_metrics(p, start, write=lead) for p in mpaths]
    t_offset = [r[0] for r in resumed]
    active = np.array([not r[1] for r in resumed])
    step_fn = setup.step_fn
    validate = (_validator(cfg, runs, task, setup.graphdef, stacked, layout)
                if cfg.val_every else None)
    mngrs = [_manager(out, cfg.keep_checkpoints) for out in outs]
    unpack_state = jax.jit(layout.unpack_state)

    def save(done):
        full = unpack_state(state)
        for s, mngr in enumerate(mngrs):
            st = _unstack(full, s) if stacked else full
            mngr.save(done, args=ocp.args.StandardSave(st), force=True)

    from tqdm.auto import tqdm

    name = f"{cfg.task}/{cfg.model}" + (f" x{len(runs)} seeds" if stacked else "")
    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and lead), desc=name)
    window: list[dict] = []
    t0 = time.perf_counter()
    files = [open(p if lead else os.devnull, "a") for p in mpaths]
    try:
        for i in range(start, cfg.steps):
            if not active.any():
                break
            state, m = step_fn(state, *setup.step_args(active))
            window.append(m)
            done = i + 1
            val, stop_now = None, np.zeros(len(runs), bool)
            if validate is not None and done % cfg.val_every == 0:
                val = validate(state, rest)
            if done % cfg.log_every == 0 or done == cfg.steps or val is not None:
                avg = {k: np.mean(np.stack([np.asarray(w[k]) for w in window]), axis=0)
                       for k in ("loss", "accuracy")}
                lr = np.asarray(m["lr"])
                for s in range(len(runs)):
                    if not active[s]:
                        continue
                    pick = (lambda x, s=s: float(x[s])) if stacked else float
                    rec = {"step": done, "loss": pick(avg["loss"]),
                           "accuracy": pick(avg["accuracy"]), "lr": pick(lr),
                           "seconds": round(t_offset[s] + time.perf_counter() - t0, 3)}
                    if val is not None:
                        rec["val_accuracy"] = round(float(val[s]), 6)
                        if cfg.early_stop and val[s] > cfg.early_stop:
                            rec["early_stop"] = True
                            stop_now[s] = True
                    files[s].write(json.dumps(rec) + "\n")
                    files[s].flush()
                window = []
                msg = {"loss": f"{float(np.mean(avg['loss'])):.3f}",
                       "acc": f"{float(np.mean(avg['accuracy'])):.3f}"}
                if val is not None:
                    msg["val"] = f"{float(np.mean(val)):.3f}"
                bar.set_postfix(**msg)
                if stop_now.any():
                    active &= ~stop_now
            bar.update(1)
            # a stopped seed's final state is saved at its step (the others' too): once
            if done % cfg.ckpt_every == 0 or done == cfg.steps or (val is not None and
                                                                   stop_now.any()):
                save(done)
            if stop_at is not None and done >= stop_at:
                break
    finally:
        for f in files:
            f.close()
        for mngr in mngrs:
            mngr.wait_until_finished()
            mngr.close()
        bar.close()
    params = layout.unpack(state["params"])
    if stacked:
        return [nnx.merge(setup.graphdef, _unstack(params, s), _unstack(rest, s))
                for s in range(len(runs))], task
    return nnx.merge(setup.graphdef, params, rest), task


class Setup:
    """What a training run steps with: graph, packed state, optimiser, jitted step, keys.

    Args:
      cfg: the run (with ``seeds``: the ensemble of its seed configs, stacked).
      task: its task.
      mesh: the device mesh (None: one device).
    """

    def __init__(self, cfg: Config, task, mesh=None):
        self.cfg, self.task, self.mesh = cfg, task, mesh
        self.runs = seed_configs(cfg)
        self.stacked = bool(cfg.seeds)
        if self.stacked:
            graphdef, rest, state, _, schedule = init_ensemble(self.runs, task)
            one = _unstack(state["params"], 0)
            self.data_key = data_keys(self.runs)
        else:
            graphdef, rest, state, _, schedule = init_state(cfg, task, mesh)
            one = state["params"]
            self.data_key = jax.random.key(cfg.seed + 1)
        self.graphdef, self.rest, self.schedule = graphdef, rest, schedule
        self.layout = ParamLayout(one, _decays(cfg))
        self.tx, _ = make_optimizer(cfg, self.layout)
        self._init = state  # unpacked: the checkpoint format
        self.step_fn = make_train_step(cfg, task, graphdef, self.tx, schedule, mesh,
                                       ensemble=len(self.runs) * self.stacked,
                                       layout=self.layout)

    def pack(self, state):
        return jax.jit(self.layout.pack_state)(state)

    def restore(self):
        """``(packed state, step)``: the latest checkpoint (every seed's newest common one), or
        the initial state at step 0."""
        outs = [Path(r.out) for r in self.runs]
        keep = self.cfg.keep_checkpoints
        if self.stacked:
            state, start = _restore_ensemble(outs, self._init, keep)
        else:
            state, start = restore_latest(outs[0], self._init, keep)
        return self.pack(state), start

    def initial(self):
        """The packed initial state."""
        return self.pack(self._init)

    def step_args(self, active=None):
        """The arguments after the state: ``(rest, data_key)`` (+ ``active`` for ensembles)."""
        if not self.stacked:
            return (self.rest, self.data_key)
        if active is None:
            active = np.ones(len(self.runs), bool)
        return (self.rest, self.data_key, jnp.asarray(active))


def _validator(cfg: Config, runs: list[Config], task, graphdef, stacked: bool,
               layout: ParamLayout):
    """``state -> [S]`` validation accuracies: ``val_size`` sequences of lengths uniform over
    the test range (per-token tasks: every position of ``val_size`` test-length words)."""
    ev = Evaluator(graphdef, task, stacked=stacked, batch=cfg.eval_batch)
    keys = [jax.random.key(r.seed + 3) for r in runs]
    key = jnp.stack(keys) if stacked else keys[0]
    lo, hi = task.test_sizes
    # the same lengths for every seed (an ensemble member validates as its single run does)
    lengths = np.random.default_rng(_VAL_LENGTHS).integers(lo, hi + 1, cfg.val_size)

    def validate(state, rest):
        params = layout.unpack(state["params"])
        if getattr(task, "per_token", False):
            hits, _ = ev.prefix_counts(params, rest, key, cfg.val_size, hi)
            acc = hits.sum(-1) / (cfg.val_size * hi)
        else:
            acc = ev.sequence_hits(params, rest, key, lengths).mean(-1)
        return np.atleast_1d(np.asarray(acc, np.float64))

    return validate


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------
def wilson(hits, n, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (95% by default) of ``hits`` successes out of ``n`` trials."""
    hits, n = np.asarray(hits, np.float64), np.asarray(n, np.float64)
    p = hits / np.maximum(n, 1)
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return np.clip(mid - half, 0, 1), np.clip(mid + half, 0, 1)


def _bucket(n: int, quantum: int = 64) -> int:
    return int(math.ceil(n / quantum) * quantum)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


# Most tokens one evaluation batch holds: a batch of long sequences has fewer of them.
EVAL_TOKENS = 1 << 17
# The most memory one evaluation batch may use, as a fraction of the device's (see
# ``eval_memory_budget``); a batch whose compiled program needs more is halved, and a single
# sequence that needs more is refused (UsageError) instead of allocated.
EVAL_MEMORY_FRACTION = 0.5


def eval_memory_budget() -> int:
    """Bytes one evaluation batch may use: ``EVAL_MEMORY_FRACTION`` of the device memory (the
    backend's ``bytes_limit`` where it reports one, else the host's physical memory)."""
    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics
        pass
    total = (stats or {}).get("bytes_limit")
    if not total:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(EVAL_MEMORY_FRACTION * total)


def _program_bytes(exe) -> int:
    """Device bytes a compiled program needs (arguments, outputs and temporaries)."""
    try:
        m = exe.memory_analysis()
    except Exception:  # noqa: BLE001 - a backend without the analysis: no bound known
        return 0
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class Evaluator:
    """Jitted evaluation of one model or of a stacked ensemble (vmapped over seeds).

    The samples are drawn inside the jitted functions from ``fold_in(key, batch index)``; with
    ``stacked``, ``params``, ``rest`` and ``key`` carry a leading seed axis. A batch holds at
    most ``batch`` sequences and ``EVAL_TOKENS`` tokens. Where its compiled program needs more
    than ``budget`` bytes (XLA's memory analysis; default :func:`eval_memory_budget`), the
    model runs over the batch in 2, 4, ... pieces (``lax.map``), so the sequences evaluated
    never depend on the device's memory; a length at which one sequence needs more than
    ``budget`` is a UsageError, raised before anything runs.
    """

    def __init__(self, graphdef, task, *, stacked: bool = False, batch: int = 512,
                 budget: int | None = None):
        self.graphdef, self.task, self.stacked, self.batch = graphdef, task, stacked, batch
        self.budget = eval_memory_budget() if budget is None else budget
        # (kind, n, size, pieces) -> (compiled, bytes)
        self.programs: dict[tuple, tuple] = {}
        vm = jax.vmap if stacked else (lambda f, in_axes=None: f)

        def predict(params, rest, x, pieces):
            """argmax of the logits, the model run over ``pieces`` parts of the batch."""
            if pieces == 1:
                return jnp.argmax(nnx.merge(graphdef, params, rest)(x), -1)
            n = x.shape[0]
            per = -(-n // pieces)
            xp = jnp.concatenate([x, jnp.repeat(x[-1:], per * pieces - n, 0)])
            xp = xp.reshape((pieces, per) + x.shape[1:])
            out = jax.lax.map(
                lambda xx: jnp.argmax(nnx.merge(graphdef, params, rest)(xx), -1), xp)
            return out.reshape((per * pieces,) + out.shape[2:])[:n]

        def seq_hits(params, rest, key, b, lens, T, pieces):
            x, y, m = task.sample_lengths(jax.random.fold_in(key, b), lens, T)
            hit = (predict(params, rest, x, pieces) == y).astype(jnp.float32) * m
            return hit.sum(1) / jnp.maximum(m.sum(1), 1.0)

        def img_hits(params, rest, key, b, n, size, pieces):
            x, y, m = task.sample(jax.random.fold_in(key, b), n, size)
            hit = (predict(params, rest, x, pieces) == y).astype(jnp.float32) * m
            return hit.reshape(n, -1).sum(1)

        def pos_hits(params, rest, key, b, n, T, pieces):
            x, y, m = task.sample(jax.random.fold_in(key, b), n, T)
            hit = (predict(params, rest, x, pieces) == y) & (m > 0)
            return hit.sum(0), jnp.cumprod(hit, axis=1).sum(0)

        ax = (0, 0, 0, None, None, None, None)
        self._jit = {"seq": jax.jit(vm(seq_hits, in_axes=ax), static_argnums=(5, 6)),
                     "img": jax.jit(vm(img_hits, in_axes=ax), static_argnums=(4, 5, 6)),
                     "pos": jax.jit(vm(pos_hits, in_axes=ax), static_argnums=(4, 5, 6))}

    def _program(self, kind: str, n: int, size: int, params, rest, key):
        """``(run, n)``: the program of ``kind`` for a batch of ``n`` at ``size`` (``run(b[,
        lens])``), with the model run over 1, 2, 4, ... pieces of the batch until it fits
        ``self.budget``: the batch, and so the sequences sampled, stays the same."""
        pieces = 1
        while True:
            k = (kind, n, size, pieces)
            if k not in self.programs:
                if kind == "seq":
                    args = (params, rest, key, 0, jnp.zeros((n,), jnp.int32), size, pieces)
                else:
                    args = (params, rest, key, 0, n, size, pieces)
                exe = self._jit[kind].lower(*args).compile()
                self.programs[k] = (exe, _program_bytes(exe))
            exe, need = self.programs[k]
            if need <= self.budget:
                return exe, n
            if pieces >= n:
                what = "image of size" if kind == "img" else "sequence of length"
                raise UsageError(
                    f"evaluating one {what} {size} needs {_gib(need)} of device memory, more "
                    f"than the evaluation budget of {_gib(self.budget)} (a fraction "
                    f"{EVAL_MEMORY_FRACTION} of the device's); evaluate shorter lengths "
                    "(python -m experiments.evaluate RUN --lengths ...)")
            pieces = min(n, 2 * pieces)

    def sequence_hits(self, params, rest, key, lengths, progress: bool = False) -> np.ndarray:
        """Accuracy of every sequence (``[N]``, or ``[S, N]`` stacked) of the given lengths;
        sequences are sorted by length and packed into batches padded to a multiple of 64
        tokens and a power of two of sequences (the next at or above the number left, at most
        ``batch``; the padding repeats the last sequence)."""
        from tqdm.auto import tqdm

        lengths = np.asarray(lengths, np.int64)
        order = np.argsort(lengths, kind="stable")
        seeds = (jax.tree.leaves(params)[0].shape[0],) if self.stacked else ()
        out = np.zeros(seeds + (len(order),))
        s, b = 0, 0
        bar = tqdm(total=len(order), disable=not progress, desc="eval", leave=False)
        while s < len(order):
            n = min(self.batch, len(order) - s)
            while n > 1 and _bucket(int(lengths[order[s + n - 1]])) * n > max(
                    EVAL_TOKENS, self.batch * 64):
                n //= 2
            T = min(_bucket(int(lengths[order[s + n - 1]])), int(lengths.max()))
            exe, n_p = self._program("seq", min(self.batch, _pow2(n)), T, params, rest, key)
            n = min(n, n_p)  # few shapes, no padding to a whole batch
            idx = order[s:s + n]
            lens = lengths[np.concatenate([idx, np.full(n_p - n, idx[-1])])]
            c = np.asarray(exe(params, rest, key, b, jnp.asarray(lens, jnp.int32)))
            out[..., idx] = c[..., :n]
            s, b = s + n, b + 1
            bar.update(n)
        bar.close()
        return out

    def image_hits(self, params, rest, key, size: int, n_total: int, j: int) -> np.ndarray:
        hits, done = 0.0, 0
        while done < n_total:
            exe, n = self._program("img", min(self.batch, n_total - done), size, params, rest,
                                   key)
            hits = hits + np.asarray(exe(params, rest, key, j * 100003 + done))
            done += n
        return np.asarray(hits)

    def prefix_counts(self, params, rest, key, n_total: int, T: int):
        """Per-position correct counts and prefix-all-correct counts over ``n_total`` words of
        length T: two ``[T]`` (or ``[S, T]``) arrays."""
        per = max(1, min(self.batch, EVAL_TOKENS // T))
        hits = prefix = 0
        b, done = 0, 0
        while done < n_total:
            exe, n = self._program("pos", min(per, n_total - done), T, params, rest, key)
            h, p = exe(params, rest, key, b)
            hits, prefix = hits + np.asarray(h, np.int64), prefix + np.asarray(p, np.int64)
            done, b = done + n, b + 1
        return np.asarray(hits), np.asarray(prefix)


def _split_model(models):
    """``(graphdef, params, rest, stacked)`` of one model or a list of models (stacked)."""
    if isinstance(models, list | tuple):
        parts = [nnx.split(m, nnx.Param, ...) for m in models]
        return (parts[0][0], _stack([p[1] for p in parts]), _stack([p[2] for p in parts]),
                True)
    graphdef, params, rest = nnx.split(models, nnx.Param, ...)
    return graphdef, params, rest, False


def evaluate(model, task, lengths, *, per_length: int = 256, batch: int = 512, seed=0,
             progress: bool = False, budget: int | None = None):
    """The eval.json record(s) of ``model`` on ``task`` at ``lengths``.

    Token tasks with one answer per sequence: ``per_length`` sequences at each length.
    Per-token tasks (group word problems): ``per_length`` sequences of length
    ``max(lengths)``, giving the accuracy at each position (``accuracy[i]`` at position
    ``lengths[i]``) and the fraction of sequences correct at every position up to it
    (``sequence_accuracy``, DeltaProduct's metric). Image tasks: ``per_length`` images per
    size. Each accuracy has a 95% Wilson interval (its sequences as the independent trials).

    Args:
      model: a model, or a list of models of the same graph (an ensemble: evaluated vmapped,
        one record each; ``seed`` is then the list of their seeds).
      seed: the run's seed (the evaluation data come from ``key(seed + 2)``).
      budget: bytes one evaluation program may use (default :func:`eval_memory_budget`);
        the results do not depend on it (see :class:`Evaluator`).

    Returns:
      the record (a dict), or a list of records for a list of models.
    """
    if isinstance(per_length, bool) or not isinstance(per_length, int) or per_length < 1:
        raise ValueError(f"per_length must be a positive integer, got {per_length!r}")
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be positive integers, got {lengths}")
    graphdef, params, rest, stacked = _split_model(model)
    seeds = list(seed) if stacked else [seed]
    if stacked and len(seeds) != len(model):
        raise ValueError(f"{len(model)} models but {len(seeds)} seeds")
    keys = [jax.random.key(s + 2) for s in seeds]
    key = jnp.stack(keys) if stacked else keys[0]
    ev = Evaluator(graphdef, task, stacked=stacked, batch=batch, budget=budget)
    S = len(seeds)
    if getattr(task, "per_token", False):
        T = max(lengths)
        hits, prefix = ev.prefix_counts(params, rest, key, per_length, T)
        hits, prefix = hits.reshape(S, T), prefix.reshape(S, T)
        pos = np.asarray(lengths) - 1
        recs = [per_token_summary(lengths, hits[s, pos], prefix[s, pos], per_length,
                                  task.chance) for s in range(S)]
    elif task.kind == "tokens":
        seq_lengths = np.repeat(np.asarray(lengths), per_length)
        acc = ev.sequence_hits(params, rest, key, seq_lengths, progress).reshape(
            S, len(lengths), per_length)
        recs = [eval_summary(lengths, list(acc[s].mean(-1)), task.chance, n=per_length)
                for s in range(S)]
    else:
        hits = np.stack([ev.image_hits(params, rest, key, size, per_length, j)
                         for j, size in enumerate(lengths)], axis=-1).reshape(S, len(lengths))
        recs = [eval_summary(lengths, list(hits[s] / per_length), task.chance, n=per_length)
                for s in range(S)]
    return recs if stacked else recs[0]


def evaluate_lengths(model, task, lengths, *, per_length: int = 256, batch: int = 512,
                     seed: int = 0, progress: bool = False) -> list[float]:
    """Accuracy of ``model`` at each length (or image size) in ``lengths`` (see
    :func:`evaluate`, which also gives the counts and intervals)."""
    return evaluate(model, task, lengths, per_length=per_length, batch=batch, seed=seed,
                    progress=progress)["accuracy"]


def _r(x) -> list[float]:
    return [round(float(v), 6) for v in np.atleast_1d(x)]


def eval_summary(lengths, accs, chance: float, n: int | None = None) -> dict:
    """The eval.json record: accuracy per length, their mean and the scaled accuracy
    ``(mean - chance) / (1 - chance)``; with ``n`` (sequences per length) also the counts and
    95% Wilson intervals (the mean's over all ``n * len(lengths)`` sequences)."""
    mean = float(np.mean(accs))
    rec = {
        "lengths": [int(v) for v in lengths],
        "accuracy": _r(accs),
        "mean_accuracy": round(mean, 6),
        "scaled_accuracy": round((mean - chance) / (1.0 - chance), 6),
    }
    if n is not None:
        accs = np.asarray(accs, np.float64)
        lo, hi = wilson(np.round(accs * n), n)
        N = n * len(lengths)
        mlo, mhi = wilson(round(mean * N), N)
        rec.update({
            "sequences_per_length": int(n),
            "sequences": int(N),
            "accuracy_ci": [_r(lo), _r(hi)],
            "mean_accuracy_ci": _r([mlo, mhi]),
            "scaled_accuracy_ci": _r([(mlo - chance) / (1 - chance),
                                      (mhi - chance) / (1 - chance)]),
            "chance": round(float(chance), 6),
        })
    return rec


def per_token_summary(lengths, hits, prefix, n: int, chance: float) -> dict:
    """The eval.json record of a per-token task: ``hits[i]`` / ``prefix[i]`` of ``n`` sequences
    were right at position ``lengths[i]`` / at every position up to it."""
    acc = np.asarray(hits, np.float64) / n
    seq = np.asarray(prefix, np.float64) / n
    rec = eval_summary(lengths, acc, chance)
    # the mean over positions: its interval takes the n sequences as the trials
    mlo, mhi = wilson(round(rec["mean_accuracy"] * n), n)
    lo, hi = wilson(hits, n)
    slo, shi = wilson(prefix, n)
    ok = np.asarray(lengths)[seq >= 0.9]  # the prefix fraction falls with the length
    rec.update({
        "metric": "per_token",
        "sequences_per_length": int(n),
        "sequences": int(n),
        "accuracy_ci": [_r(lo), _r(hi)],
        "mean_accuracy_ci": _r([mlo, mhi]),
        "scaled_accuracy_ci": _r([(mlo - chance) / (1 - chance), (mhi - chance) / (1 - chance)]),
        "sequence_accuracy": _r(seq),
        "sequence_accuracy_ci": [_r(slo), _r(shi)],
        # the longest prefix that at least 90% of the sequences get entirely right
        "length_90": int(ok.max()) if len(ok) else 0,
        "chance": round(float(chance), 6),
    })
    return rec


def plot_eval(summary: dict, task, path: Path, title: str = "") -> None:
    """Accuracy vs length (with its 95% band), the training range shaded, chance dashed; for
    per-token tasks a second panel with the fraction of sequences correct up to each length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_token = "sequence_accuracy" in summary
    fig, axes = plt.subplots(1, 2 if per_token else 1, figsize=(11 if per_token else 6, 3.5),
                             squeeze=False)
    x = summary["lengths"]
    panels = [("accuracy", "accuracy at position" if per_token else "accuracy")]
    if per_token:
        panels.append(("sequence_accuracy", "fraction correct up to length"))
    for ax, (key, label) in zip(axes[0], panels):
        ax.plot(x, summary[key], lw=1.2)
        ci = summary.get(f"{key}_ci")
        if ci is not None:
            ax.fill_between(x, ci[0], ci[1], alpha=0.25, lw=0)
        lo, hi = task.train_sizes
        ax.axvspan(lo, hi, color="0.9", label="train lengths")
        if key == "accuracy":
            ax.axhline(task.chance, ls="--", color="0.5", label="chance")
        ax.set_xlabel("length" if task.kind == "tokens" else "size")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower left", fontsize=8)
    n = summary.get("sequences_per_length")
    fig.suptitle(title or f"mean {summary['mean_accuracy']:.3f}, scaled "
                 f"{summary['scaled_accuracy']:.3f}" + (f" ({n} sequences per length)" if n
                                                         else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: Config, *, stop_at: int | None = None):
    """Train, then evaluate over the task's test lengths and write eval.json / eval.png
    (with ``cfg.seeds``: in every seed's directory; returns the list of records)."""
    model, task = train(cfg, stop_at=stop_at)
    if stop_at is not None and stop_at < cfg.steps:
        return None
    runs = seed_configs(cfg)
    lengths = task.eval_sizes()
    seeds = [r.seed for r in runs] if cfg.seeds else cfg.seed
    summaries = evaluate(model, task, lengths, per_length=cfg.eval_per_length,
                         batch=cfg.eval_batch, seed=seeds, progress=cfg.progress)
    if jax.process_index() != 0:
        return summaries
    for r, summary in zip(runs, summaries if cfg.seeds else [summaries]):
        out = Path(r.out)
        (out / "eval.json").write_text(json.dumps(summary) + "\n")
        plot_eval(summary, task, out / "eval.png",
                  title=f"{r.task} / {r.model} ({r.eigen}), seed {r.seed}: mean "
                        f"{summary['mean_accuracy']:.3f}, {summary['sequences_per_length']} "
                        "sequences per length")
    return summaries


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
PROG = "python -m experiments.train"


def parse_args(argv: list[str] | None = None) -> Config:
    """``--preset`` (applied for the given task / model) first, then every other flag; a bad
    name or value is a UsageError (one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(prog=PROG, add_help=False, allow_abbrev=False)
    pre.add_argument("--preset", default="")
    pre.add_argument("--task", default=Config.task)
    pre.add_argument("--model", default=Config.model)
    known, _ = pre.parse_known_args(argv)
    # Fail fast on unknown names, listing the valid ones.
    from experiments.models import MODELS, model_names

    with _usage_errors():
        get_task(known.task)
        if known.model not in MODELS and known.model not in model_names():
            raise ValueError(f"unknown model {known.model!r}; valid models: "
                             f"{', '.join(model_names())}")
        base = apply_preset(Config(task=known.task, model=known.model), known.preset)
    return tyro_cli(Config, default=base, args=argv, prog=PROG,
                    description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> None:
    parallel.initialize_from_env()  # [parallel] multi-host runs (see lrnn.parallel)
    try:
        cfg = parse_args(argv)
        if not cfg.out:
            raise UsageError("--out DIR is required")
        summary = run(cfg)  # its checks run before anything is written
    except UsageError as e:
        fail(PROG, e)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
