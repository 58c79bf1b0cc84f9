"""Sharding as data: mesh resolution, logical-axis rules, golden PartitionSpecs, and the same
losses on every mesh.

The golden snapshot tests/golden/partition_specs_tiny.json holds the PartitionSpec of every
trainable and frozen-LM parameter of the tiny config on a (data=2, fsdp=2, tensor=2) mesh.
After a deliberate change to the model's parameters or the rules, regenerate it with

    LDLM_REGEN_GOLDEN=1 pytest tests/test_sharding.py -k golden

and review the diff.
"""

import functools
import json
import logging
import os

import jax
import numpy as np
import pytest
from train_utils import REPO, tiny_config

from ldlm_jax import sharding as shd
from ldlm_jax import trainer
from ldlm_jax.frozen_lm import frozen_lm_from_config
from ldlm_jax.ldlm import LDLM

GOLDEN = os.path.join(REPO, "tests", "golden", "partition_specs_tiny.json")
MESHES = {
    "8x1x1": dict(data=8, fsdp=1, tensor=1),
    "2x2x2": dict(data=2, fsdp=2, tensor=2),
    "1x8x1": dict(data=1, fsdp=8, tensor=1),
}


# conftest.py: compile with most XLA optimisations off (behaviour, not speed).
FAST_COMPILE = True


def test_resolve_mesh_shape_fills_and_rejects():
    assert shd.resolve_mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == (4, 2, 1)
    assert shd.resolve_mesh_shape(dict(data=2, fsdp=2, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(shd.ShardingError, match="needs 6 devices but 8"):
        shd.resolve_mesh_shape(dict(data=3, fsdp=2, tensor=1), 8)
    with pytest.raises(shd.ShardingError, match="not divisible by 3"):
        shd.resolve_mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)


def test_rules_missing_axis_and_fallback(caplog):
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    rules = shd.rules_table((("embed", "fsdp"), ("heads", "tensor")))
    spec = shd.logical_to_spec(("embed", "heads"), (8, 4), rules, mesh, "q/kernel")
    assert spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    with pytest.raises(shd.ShardingError, match="'mlp'.*ffn/kernel"):
        shd.logical_to_spec(("embed", "mlp"), (8, 4), rules, mesh, "ffn/kernel")
    with caplog.at_level(logging.WARNING):
        spec = shd.logical_to_spec(("embed", "heads"), (8, 3), rules, mesh, "odd/kernel")
    assert spec == jax.sharding.PartitionSpec("fsdp", None)
    assert "odd/kernel" in caplog.text
    with pytest.raises(shd.ShardingError, match="unknown mesh axis 'model'"):
        shd.rules_table((("embed", "model"),))


def _specs_json(config):
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    frozen = frozen_lm_from_config(config)
    model = LDLM(config, frozen)
    rules = shd.rules_table(config.logical_axis_rules)
    init = functools.partial(model.init_params, unbox=False)
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    ids = jax.ShapeDtypeStruct((1, 8), np.int32)
    frozen_boxed = jax.eval_shape(frozen.module.init, jax.random.PRNGKey(0), ids)["params"]
    out = {
        "params/" + k: v
        for k, v in shd.specs_to_json(shd.partition_specs(boxed, mesh, rules)).items()
    }
    frozen_specs = shd.specs_to_json(shd.partition_specs(frozen_boxed, mesh, rules))
    out.update({"frozen_lm/" + k: v for k, v in frozen_specs.items()})
    return out


def test_partition_specs_match_golden():
    specs = _specs_json(tiny_config())
    if os.environ.get("LDLM_REGEN_GOLDEN"):
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        with open(GOLDEN, "w") as f:
            json.dump(specs, f, indent=1, sort_keys=True)
            f.write("\n")
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert specs == golden, "PartitionSpecs changed; see this module's docstring to regenerate"
    # The rules do shard something on every axis (a snapshot of all-replicated would be useless).
    flat = " ".join(golden.values())
    assert "'fsdp'" in flat and "'tensor'" in flat


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    runs = {}
    for name, mesh in MESHES.items():
        config = tiny_config(*(f"mesh.{k}={v}" for k, v in mesh.items()))
        runs[name] = trainer.train(config, str(tmp_path_factory.mktemp(name)), stop_at=3)
    config = tiny_config("mesh.data=1")
    runs["1dev"] = trainer.train(
        config, str(tmp_path_factory.mktemp("one")), devices=jax.devices()[:1], stop_at=3
    )
    return runs


def test_same_losses_on_every_mesh(mesh_runs):
    reference = mesh_runs["1dev"]
    assert sorted(reference.losses) == [1, 2, 3]
    for name, run in mesh_runs.items():
        assert run.batch_hashes == reference.batch_hashes, name
        for step, loss in reference.losses.items():
            assert abs(run.losses[step] - loss) < 1e-4, (name, step, run.losses[step], loss)


def test_state_is_sharded_not_replicated(mesh_runs, tmp_path):
    # fsdp=8: the 'embed'-sharded matrices hold 1/8 of their rows on each device.
    config = tiny_config("mesh.data=1", "mesh.fsdp=8", "train.steps=0")
    from ldlm_jax import optimizer as optim
    from ldlm_jax import train_state as ts

    model = LDLM(config, frozen_lm_from_config(config))
    opt, _ = optim.make_optimizer(config)
    init = ts.make_init_fn(functools.partial(model.init_params, unbox=False), opt, config)
    mesh = shd.make_mesh(dict(config.mesh))
    state, _ = ts.create_train_state(init, jax.random.PRNGKey(0), mesh, config.logical_axis_rules)
    sharded = [
        x
        for x in jax.tree.leaves(state.params)
        if x.ndim == 2 and x.sharding.spec and x.sharding.spec[0] == "fsdp"
    ]
    assert sharded
    for x in sharded:
        assert x.addressable_shards[0].data.shape[0] == x.shape[0] // 8
    mu = state.opt_state[1][0].mu
    assert jax.tree.leaves(mu)[0].sharding == jax.tree.leaves(state.params)[0].sharding
