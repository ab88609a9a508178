"""Training on a (data, seq) mesh equals the single-device run (8 CPU devices).

The model forward runs inside ``lrnn.parallel.sequence_sharded``: batch over ``data``, time
over ``seq``; the mixers pass the axis to their ops (``lrnn.parallel.axis_kwargs``) and the
short causal convolutions take a halo from the previous shard (``lrnn.parallel.causal_pad``).
The training sequence (12 tokens) is padded at the end to a multiple of ``seq``; the model is
causal and the padding is masked, so the loss is unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.configs import Config, apply_preset
from experiments.train import train


def tiny(tmp_path, name, model, **kw) -> Config:
    cfg = apply_preset(Config(task="parity", model=model), "tiny")
    # conv = 3: a halo of 2 tokens crosses every shard boundary (12 tokens over 4 or 8 shards).
    return dataclasses.replace(cfg, out=str(tmp_path / name), implementation="chunked",
                               conv=3, steps=2, ckpt_every=2, **kw)


def rel_params(a, b) -> float:
    la = jax.tree.leaves(nnx.state(a, nnx.Param))
    lb = jax.tree.leaves(nnx.state(b, nnx.Param))
    assert len(la) == len(lb)
    num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(la, lb))
    den = sum(float(np.sum(np.asarray(y) ** 2)) for y in lb)
    return float(np.sqrt(num / den))


def _check(tmp_path, model, meshes):
    one = tiny(tmp_path, f"{model}_one", model)
    m1, _ = train(one)
    for mesh in meshes:
        name = mesh.replace("=", "").replace(",", "_")
        mp, _ = train(dataclasses.replace(one, out=str(tmp_path / f"{model}_{name}"), mesh=mesh))
        err = rel_params(mp, m1)
        print(f"{model} {mesh}: relative parameter difference {err:.2e}")
        assert err <= 1e-5, f"{model} on mesh {mesh}: parameters differ by {err:.2e}"


def test_seq_mesh_training_matches_single_device(tmp_path):
    """The Mamba-style diagonal mixer (with its causal convolution) on a (2, 4) mesh."""
    _check(tmp_path, "diagonal", ["data=2,seq=4"])


@pytest.mark.slow  # 12-25 s of compiles per mesh on CI; the same code path as the test above
@pytest.mark.parametrize(
    "model, meshes",
    [
        ("diagonal", ["data=1,seq=8"]),
        # DeltaProduct: DENSE summaries and q/k/v convolutions; GLA; SLiCE (structured).
        ("deltaproduct", ["data=2,seq=4", "data=1,seq=8"]),
        ("gla", ["data=2,seq=4", "data=1,seq=8"]),
        ("slice", ["data=2,seq=4", "data=1,seq=8"]),
    ],
)
def test_seq_mesh_training_other_meshes_and_mixers(tmp_path, model, meshes):
    _check(tmp_path, model, meshes)


def test_seq_mesh_rejects_nonlinear_mixers(tmp_path):
    cfg = tiny(tmp_path, "lstm", "lstm", mesh="data=1,seq=2")
    with pytest.raises(NotImplementedError, match="lstm.*sequence"):
        train(cfg)
