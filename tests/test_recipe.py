"""The LDLM recipe, numerically: gamma warmup and gradient routing, schedules, the adaptive timestep
sampler (a distribution test), decoder-input noise and the self-conditioning coin."""

import math

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlm_jax import adaptive_timesteps as at
from ldlm_jax import gamma_warmup, losses
from ldlm_jax.config import load_config
from ldlm_jax.frozen_lm import frozen_lm_from_config
from ldlm_jax.ldlm import LDLM
from ldlm_jax.schedule import get_schedule

# --------------------------------------------------------------------------------------------------
# gamma warmup


def test_gamma_formula_endpoints_and_monotone():
    s_wu, g_min = 1000, 0.001
    steps = np.arange(0, 1200, 10)
    g = np.asarray(jax.vmap(lambda s: gamma_warmup.gamma_schedule(s, s_wu, g_min))(steps))
    assert g[0] == pytest.approx(g_min, rel=1e-5)
    assert np.all(np.diff(g) >= -1e-7) and np.all(g[steps >= s_wu] == 1.0)
    sig = lambda x: 1 / (1 + math.exp(-10 * (x / s_wu - 0.8)))  # noqa: E731
    want = g_min + (1 - g_min) * (sig(500) - sig(0)) / (sig(s_wu) - sig(0))
    assert float(gamma_warmup.gamma_schedule(500, s_wu, g_min)) == pytest.approx(want, rel=1e-5)


def test_gamma_off_is_one():
    c = load_config("configs/tiny.py", ["--config.recipe.gamma_warmup=False"])
    assert float(gamma_warmup.gamma(0, c)) == 1.0


def test_token_cross_entropy_matches_log_softmax_and_its_gradient():
    """The hand-written NLL gradient against autodiff of log_softmax + take_along_axis, and the
    accuracy against argmax, with some tokens predicted right and some positions masked."""
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    logits = 3.0 * jax.random.normal(k[0], (3, 5, 50))
    ids = jax.random.randint(k[1], (3, 5), 0, 50)
    ids = ids.at[0, :3].set(jnp.argmax(logits[0, :3], -1))
    mask = (jax.random.uniform(k[2], (3, 5)) > 0.3).astype(jnp.int32)

    def reference(logits):
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), ids[..., None], -1)[..., 0]
        correct = (jnp.argmax(logits, -1) == ids).astype(jnp.float32)
        return losses.masked_mean(nll, mask), losses.masked_mean(correct, mask)

    ours = losses.token_cross_entropy(logits, ids, mask)
    want = reference(logits)
    assert float(ours[0]) == pytest.approx(float(want[0]), rel=1e-6)
    assert float(ours[1]) == float(want[1]) > 0
    grad = jax.grad(lambda x: losses.token_cross_entropy(x, ids, mask)[0])(logits)
    want_grad = jax.grad(lambda x: reference(x)[0])(logits)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(grad[mask == 0]).max()) == 0.0  # masked positions get no gradient


# --------------------------------------------------------------------------------------------------
# Gradient routing through the full loss (tiny random frozen LM, one compiled program)

TERMS = ("diffusion_loss", "token_loss", "hidden_loss")


@pytest.fixture(scope="module")
def tiny():
    config = load_config("configs/tiny.py:random_lm", ["--config.recipe.gamma_warmup_steps=1000"])
    frozen = frozen_lm_from_config(config)
    model = LDLM(config, frozen)
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (4, config.data.seq_len), 5, 1000)
    mask = jnp.ones_like(ids).at[:, 20:].set(0)
    batch = {"input_ids": ids, "attention_mask": mask}
    stats = {"mean": jnp.zeros(frozen.hidden_size), "std": jnp.ones(frozen.hidden_size)}

    def metric_grads(params, frozen_params, step, rng):
        # One vmapped backward pass for the three loss terms (one compile).
        def f(p, fp):
            _, aux = model.loss(p, fp, stats, batch, rng, step, None)
            return jnp.stack([aux["metrics"][n] for n in TERMS]), aux["metrics"]

        (grads, frozen_grads), metrics = jax.jacrev(f, argnums=(0, 1), has_aux=True)(
            params, frozen_params
        )
        pick = lambda i, tree: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
        return {n: ((pick(i, grads), pick(i, frozen_grads)), metrics) for i, n in enumerate(TERMS)}

    def loss_fn(rng, train):
        return model.loss(params, frozen.params, stats, batch, rng, 0, None, train)[1]

    loss_fn = jax.jit(loss_fn, static_argnums=1)
    return config, model, params, batch, stats, jax.jit(metric_grads), loss_fn


def _norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(tree))))


def _close(a, b, rtol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    scale = max(_norm(b), 1e-12)
    err = math.sqrt(sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(la, lb, strict=True)))
    return err <= rtol * scale


def test_gamma_scales_encoder_gradient_only(tiny):
    config, model, params, _, _, grads, _ = tiny
    frozen = model.frozen_lm.params
    rng = jax.random.PRNGKey(3)
    step = 600
    g = float(gamma_warmup.gamma(step, config))
    assert 0.01 < g < 0.99
    at_g = grads(params, frozen, step, rng)["diffusion_loss"]
    at_1 = grads(params, frozen, 10**7, rng)["diffusion_loss"]  # past the warmup: gamma = 1
    (grad_g, _), metrics_g = at_g
    (grad_1, _), metrics_1 = at_1
    assert float(metrics_g["gamma"]) == pytest.approx(g)
    assert float(metrics_g["diffusion_loss"]) == float(metrics_1["diffusion_loss"])
    assert _norm(grad_1["encoder"]) > 0
    scaled = jax.tree.map(lambda x: g * x, grad_1["encoder"])
    assert _close(grad_g["encoder"], scaled, 1e-4)
    assert _close(grad_g["denoiser"], grad_1["denoiser"], 1e-5)
    assert _norm(grad_g["latent_decoder"]) == 0 and _norm(grad_g["token_decoder"]) == 0


def test_token_loss_trains_token_decoder_only_and_frozen_lm_gets_nothing(tiny):
    _, model, params, _, _, grads, _ = tiny
    out = grads(params, model.frozen_lm.params, 0, jax.random.PRNGKey(4))
    (grad_tok, frozen_tok), _ = out["token_loss"]
    assert _norm(grad_tok["encoder"]) == 0 and _norm(grad_tok["latent_decoder"]) == 0
    assert _norm(grad_tok["denoiser"]) == 0 and _norm(grad_tok["token_decoder"]) > 0
    (grad_h, frozen_h), _ = out["hidden_loss"]  # the MSE decoder loss shapes the latent space
    assert _norm(grad_h["encoder"]) > 0 and _norm(grad_h["latent_decoder"]) > 0
    assert _norm(grad_h["denoiser"]) == 0 and _norm(grad_h["token_decoder"]) == 0
    (_, frozen_diff), _ = out["diffusion_loss"]
    assert _norm(frozen_tok) == 0 and _norm(frozen_h) == 0 and _norm(frozen_diff) == 0


def test_decoder_noise_only_in_training(tiny):
    config, model, params, batch, stats, _, loss_fn = tiny
    rng = jax.random.PRNGKey(5)
    h = model.hidden(model.frozen_lm.params, stats, batch["input_ids"], batch["attention_mask"])
    clean = losses.hidden_mse(
        model.decode_hidden(params, model.encode(params, h, batch["attention_mask"])),
        h,
        batch["attention_mask"],
    )
    aux_eval, aux_train = loss_fn(rng, False), loss_fn(rng, True)
    assert float(aux_eval["metrics"]["hidden_mse"]) == pytest.approx(float(clean), rel=1e-5)
    assert abs(float(aux_train["metrics"]["hidden_mse"]) - float(clean)) > 1e-3
    z0 = jnp.zeros((64, 8, 16))
    assert losses.decoder_input(z0, 3.0, rng, train=False) is z0
    noisy = losses.decoder_input(z0, 3.0, rng, train=True)
    assert float(jnp.std(noisy)) == pytest.approx(3.0, rel=0.05)


def test_self_conditioning_frequency(tiny):
    config, _, _, _, _, _, loss_fn = tiny
    n = 200
    used = np.array(
        [
            float(loss_fn(jax.random.PRNGKey(100 + i), True)["metrics"]["self_cond"])
            for i in range(n)
        ]
    )
    p = config.diffusion.self_cond_prob
    assert set(np.unique(used)) <= {0.0, 1.0}
    assert abs(used.mean() - p) < 4 * math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("name", ["tan_d", "cosine", "linear"])
def test_schedule_closed_form(name):
    schedule = get_schedule(name, tan_d=3.0)
    t = np.linspace(0.0, 1.0, 201)
    alpha, sigma = (np.asarray(x, np.float64) for x in schedule.alpha_sigma(jnp.asarray(t)))
    if name == "tan_d":
        want = 1.0 / np.sqrt(1.0 + 9.0 * np.tan(np.pi * t[:-1] / 2) ** 2)
        np.testing.assert_allclose(alpha[:-1], want, atol=1e-6)
        assert alpha[100] == pytest.approx(1 / math.sqrt(10), abs=1e-6)
    elif name == "cosine":
        np.testing.assert_allclose(alpha, np.cos(np.pi * t / 2), atol=1e-6)
    else:
        want = np.exp(-0.5 * (0.1 * t + 0.5 * 19.9 * t**2))
        np.testing.assert_allclose(alpha, want, rtol=1e-5)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-5)
    assert np.all(np.diff(alpha) < 0) and np.all(np.diff(sigma) > 0)
    assert alpha[0] == pytest.approx(1.0, abs=1e-6) and sigma[0] == pytest.approx(0.0, abs=1e-6)
    if name == "linear":
        assert alpha[-1] == pytest.approx(math.exp(-0.5 * 10.05), rel=1e-5)
    else:
        assert alpha[-1] == pytest.approx(0.0, abs=1e-6) and sigma[-1] == pytest.approx(1.0)
    mid = jnp.asarray(t[20:-20])
    a, s = schedule.alpha_sigma(mid)
    np.testing.assert_allclose(schedule.log_snr(mid), np.log(a**2 / s**2), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Adaptive timestep sampler


def _ks_uniform_free(samples, cdf):
    x = np.sort(samples)
    n = len(x)
    f = cdf(x)
    return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


@pytest.fixture(scope="module")
def trained_sampler_state():
    """Feed the sampler the synthetic loss L(t) = t^2 (density dL/dt = 2t, CDF t^2)."""

    @jax.jit
    def run(state, rng):
        def body(state, key):
            k1, k2 = jax.random.split(key)
            t = at.sample_timesteps(state, k1, (512,))
            loss = t**2 + 0.01 * jax.random.normal(k2, t.shape)
            return at.update_adaptive_state(state, t, loss, 0.9), None

        return jax.lax.scan(body, state, jax.random.split(rng, 300))[0]

    return run(at.init_adaptive_state(100), jax.random.PRNGKey(0))


def test_adaptive_sampler_starts_uniform():
    t = np.asarray(
        at.sample_timesteps(at.init_adaptive_state(100), jax.random.PRNGKey(1), (20000,))
    )
    assert _ks_uniform_free(t, lambda x: x) < 0.015


def test_adaptive_sampler_converges_to_loss_derivative(trained_sampler_state):
    t = np.asarray(at.sample_timesteps(trained_sampler_state, jax.random.PRNGKey(2), (20000,)))
    assert _ks_uniform_free(t, lambda x: x**2) < 0.02  # KS vs the CDF t^2 of density 2t
    assert _ks_uniform_free(t, lambda x: x) > 0.2  # and clearly not uniform any more
    u = jnp.array([0.04, 0.25, 0.64])
    np.testing.assert_allclose(at.time_warp(trained_sampler_state, u), [0.2, 0.5, 0.8], atol=0.02)


def test_adaptive_state_survives_serialisation(trained_sampler_state, tmp_path):
    blob = flax.serialization.msgpack_serialize(jax.device_get(trained_sampler_state))
    back = flax.serialization.msgpack_restore(blob)
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "state", back)
        ckptr.wait_until_finished()
        restored = ckptr.restore(tmp_path / "state")
    for key, value in trained_sampler_state.items():
        np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(value))
    rng = jax.random.PRNGKey(9)
    np.testing.assert_array_equal(
        at.sample_timesteps(restored, rng, (64,)),
        at.sample_timesteps(trained_sampler_state, rng, (64,)),
    )
