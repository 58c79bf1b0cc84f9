"""Shapes, dtypes, logical axis names and parameter counts of the LDLM networks, computed abstractly
(jax.eval_shape) for every shipped config, plus a few concrete checks on one tiny shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlm_jax.cli.info import abstract_frozen_lm, model_info
from ldlm_jax.config import load_config
from ldlm_jax.ldlm import LDLM, LDLMNetworks, count_params

CONFIGS = ["configs/owt.py", "configs/lm1b.py", "configs/demo.py", "configs/tiny.py",
           "configs/tiny.py:random_lm"]  # fmt: skip
ALLOWED_AXES = {"embed", "mlp", "heads", "kv", "vocab", "length", "latent", "norm"}


@pytest.mark.parametrize("spec", CONFIGS)
def test_abstract_shapes_and_axes(spec):
    config = load_config(spec)
    frozen = abstract_frozen_lm(config)
    model = LDLM(config, frozen)
    params = model.abstract_params()
    L, K, D = config.data.seq_len, model.num_latents, config.model.latent_dim
    assert set(params) == {"encoder", "denoiser", "latent_decoder", "token_decoder"}
    assert params["encoder"]["initial_latents"]["embedding"].shape == (K, D)
    assert params["encoder"]["token_positions"]["embedding"].shape == (L, D)
    assert params["encoder"]["token_proj"]["linear"]["kernel"].shape == (frozen.hidden_size, D)
    head = params["token_decoder"]["lm_head"]["linear"]["kernel"]
    assert head.shape == (config.model.token_decoder.width, frozen.vocab_size)
    n_blocks = sum(k.startswith("block_") for k in params["denoiser"])
    assert n_blocks == config.model.denoiser.num_layers
    axes = jax.tree.leaves(model.logical_axes(), is_leaf=lambda x: isinstance(x, jax.P))
    for spec_ in axes:
        assert set(spec_) <= ALLOWED_AXES, spec_
    assert len(axes) == len(jax.tree.leaves(params))

    batch = 2
    sds = jax.ShapeDtypeStruct
    h = sds((batch, L, frozen.hidden_size), jnp.float32)
    mask = sds((batch, L), jnp.int32)
    z = sds((batch, K, D), jnp.float32)
    t = sds((batch,), jnp.float32)
    net = model.networks

    def run(method, *args):
        return jax.eval_shape(
            lambda p, *a: net.apply({"params": p}, *a, method=method), params, *args
        )

    assert run(LDLMNetworks.encode, h, mask) == sds((batch, K, D), jnp.float32)
    assert run(LDLMNetworks.denoise, z, t, z) == sds((batch, K, D), jnp.float32)
    assert run(LDLMNetworks.decode_hidden, z) == sds((batch, L, frozen.hidden_size), jnp.float32)
    logits = run(LDLMNetworks.decode_tokens, h, mask)
    assert logits == sds((batch, L, frozen.vocab_size), jnp.float32)


def test_paper_scale_parameter_counts():
    """configs/owt.py lands near the spec's ~124M frozen, ~50M / ~132M / ~50M / ~66M trainable."""
    counts = model_info(load_config("configs/owt.py"), flops=False)["params"]
    m = {k: v / 1e6 for k, v in counts.items()}
    assert 123 < m["frozen LM"] < 126  # GPT-2 small
    assert 40 < m["encoder"] < 55
    assert 125 < m["denoiser"] < 140
    assert 40 < m["latent decoder"] < 55
    assert 58 < m["token decoder"] < 70
    assert 270 < m["total trainable"] < 310


def test_compressed_latents_k_less_than_l():
    config = load_config("configs/tiny.py:random_lm", ["--config.model.latent_count=8"])
    model = LDLM(config, lm_dim=64, vocab_size=100)
    params = model.abstract_params()
    assert params["encoder"]["initial_latents"]["embedding"].shape == (8, 64)
    h = jax.ShapeDtypeStruct((3, 32, 64), jnp.float32)
    mask = jax.ShapeDtypeStruct((3, 32), jnp.int32)
    z = jax.eval_shape(model.encode, params, h, mask)
    assert z.shape == (3, 8, 64)
    assert jax.eval_shape(model.decode_hidden, params, z).shape == (3, 32, 64)


@pytest.fixture(scope="module")
def concrete():
    config = load_config("configs/tiny.py:random_lm")
    model = LDLM(config, lm_dim=64, vocab_size=100)
    params = model.init_params(jax.random.PRNGKey(0))
    return config, model, params


def test_pads_are_invisible_to_the_encoder(concrete):
    _, model, params = concrete
    rng = np.random.RandomState(0)
    h = jnp.asarray(rng.randn(2, 32, 64), jnp.float32)
    mask = jnp.ones((2, 32), jnp.int32).at[:, 20:].set(0)
    h2 = h.at[:, 20:].set(jnp.asarray(rng.randn(2, 12, 64), jnp.float32) * 10)
    encode = jax.jit(model.encode)
    z, z2 = encode(params, h, mask), encode(params, h2, mask)
    np.testing.assert_allclose(z, z2, atol=1e-5)
    z3 = encode(params, h2, jnp.ones_like(mask))  # unmasked, the change must show
    assert float(jnp.max(jnp.abs(z3 - z))) > 1e-3
    rms = jnp.sqrt(jnp.mean(z**2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, atol=1e-3)  # final RMSNorm: unit-scale latents


def test_denoiser_uses_time_and_self_condition(concrete):
    _, model, params = concrete
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 64))
    t = jnp.array([0.2, 0.7])
    base = model.denoise(params, z, t, jnp.zeros_like(z))
    assert base.shape == (2, 32, 64) and base.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(model.denoise(params, z, t[::-1], None) - base))) > 1e-4
    assert float(jnp.max(jnp.abs(model.denoise(params, z, t, z) - base))) > 1e-4


def test_sample_step_final_step_returns_x0(concrete):
    _, model, params = concrete
    z = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 64))
    t, s = jnp.full((2,), 0.1), jnp.zeros((2,))
    z_s, x0 = model.sample_step(params, z, t, s, jnp.zeros_like(z), jax.random.PRNGKey(3))
    np.testing.assert_allclose(z_s, x0, atol=1e-5)
    z_mid, _ = model.sample_step(params, z, jnp.full((2,), 0.9), jnp.full((2,), 0.5), x0,
                                 jax.random.PRNGKey(4))  # fmt: skip
    assert z_mid.shape == z.shape and bool(jnp.all(jnp.isfinite(z_mid)))


def test_count_params_matches_concrete(concrete):
    _, model, params = concrete
    assert count_params(params) == count_params(model.abstract_params())
