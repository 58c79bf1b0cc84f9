"""Activation sharding constraints: sharding.constrain follows config.logical_axis_rules.

The networks constrain their block-boundary activations by logical names (layers.constrain,
lm_layers.constrain -> sharding.constrain). The constraint applies only while a function built
from a config (the train step, the sampler) is traced under a multi-device jax.set_mesh; without
rules or without a mesh it is the identity. On an fsdp=8 mesh the tiny config's train step keeps
its activations batch-sharded: its per-device temporaries are well under those of the same step
with the constraints disabled (where GSPMD was free to replicate the whole batch).
"""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P
from train_utils import tiny_config

from ldlm_jax import aot
from ldlm_jax import sharding as shd

RULES = (("batch", ("data", "fsdp")), ("length", None), ("embed", "fsdp"), ("vocab", "tensor"))


# conftest.py: compile with most XLA optimisations off (behaviour, not speed).
FAST_COMPILE = True


def _lowered_text(fn, *args, mesh=None) -> str:
    if mesh is None:
        return jax.jit(fn).lower(*args).as_text()
    with jax.set_mesh(mesh):
        return jax.jit(fn).lower(*args).as_text()


def test_constrain_is_identity_without_rules_or_mesh():
    x = jnp.ones((8, 4, 16))
    names = ("batch", "length", "embed")
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    with_rules = shd.with_activation_rules(lambda a: shd.constrain(a, names), RULES)
    no_rules = lambda a: shd.constrain(a, names)  # noqa: E731
    one_device = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    for fn, m in ((no_rules, mesh), (with_rules, None), (with_rules, one_device)):
        assert "sharding_constraint" not in _lowered_text(fn, x, mesh=m)
    # Params init under eval_shape (no mesh) and eager calls are unaffected.
    assert jax.eval_shape(with_rules, x).shape == x.shape
    assert (with_rules(x) == x).all()


def test_constrain_maps_names_through_the_rules_with_fallback():
    mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
    names = ("batch", "length", "vocab")
    fn = shd.with_activation_rules(lambda a: shd.constrain(a * 2, names), RULES)
    text = _lowered_text(fn, jnp.ones((8, 4, 6)), mesh=mesh)
    assert 'sharding_constraint %1 <@mesh, [{"data", "fsdp"}, {}, {"tensor"}]>' in text, text
    # Not divisible by its mesh axes (batch 3 over 4, vocab 5 over 2): replicated on that dim.
    text = _lowered_text(fn, jnp.ones((3, 4, 5)), mesh=mesh)
    assert "sharding_constraint %1 <@mesh, [{}, {}, {}]>" in text, text
    with jax.set_mesh(mesh), shd.activation_rules(RULES):
        y = jax.jit(lambda a: shd.constrain(a, names))(jnp.ones((8, 4, 6)))
    assert y.sharding.spec == P(("data", "fsdp"), None, "tensor")
    unruled = shd.with_activation_rules(lambda a: shd.constrain(a, ("batch", "latent")), RULES)
    with pytest.raises(shd.ShardingError, match="'latent'"):
        _lowered_text(unruled, jnp.ones((8, 4)), mesh=mesh)


def _compile_train_step(config, mesh):
    step_fn, args, state_sh, _ = aot.train_step_program(config, mesh)
    jitted = jax.jit(step_fn, out_shardings=(state_sh, shd.replicated(mesh)), donate_argnums=(0,))
    with jax.set_mesh(mesh):
        lowered = jitted.lower(*args)
        return lowered.as_text(), lowered.compile().memory_analysis()


def test_train_step_activations_are_sharded_on_fsdp_mesh(monkeypatch):
    config = tiny_config("mesh.data=1", "mesh.fsdp=8")
    mesh = shd.make_mesh(dict(config.mesh))
    text, memory = _compile_train_step(config, mesh)
    # [batch=8, length=16, embed] block outputs split over the 8 fsdp devices on the batch axis.
    batch_split = '<@mesh, [{"data", "fsdp"}, {}, {}]> : tensor<8x16x'
    assert text.count(batch_split) >= 4, "no batch-sharded activation constraints"
    monkeypatch.setattr(shd, "constrain", lambda x, names: x)  # the old, inactive constraints
    text_off, memory_off = _compile_train_step(config, mesh)
    assert "sharding_constraint" not in text_off
    temp, temp_off = memory.temp_size_in_bytes, memory_off.temp_size_in_bytes
    assert temp < 0.75 * temp_off, (temp, temp_off)  # seen: 20.0 vs 42.7 MiB
