"""Diffusion-to-encoder warmup: how much of the diffusion loss's gradient reaches the encoder.

The denoiser is trained on z0g = stop_gradient(z0) + gamma(s) * (z0 - stop_gradient(z0)): its
forward value is z0, the denoiser gets the full gradient, and the encoder's gradient from the
diffusion loss is scaled by gamma(s). Early in training the latent space is shaped by the decoder
losses only; the diffusion loss then gradually joins in, which avoids the collapse of naive joint
training. The schedule is a rescaled sigmoid:

  gamma(s) = g_min + (1 - g_min) * (sig(s) - sig(0)) / (sig(S_wu) - sig(0))   for s < S_wu,
  gamma(s) = 1                                                                for s >= S_wu,
  sig(s) = sigmoid(k * (s / S_wu - c)),  k = 10, c = 0.8 (config.recipe.gamma_k / gamma_c).

With config.recipe.gamma_warmup off, gamma = 1 throughout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gamma_schedule(
    step, warmup_steps: float, gamma_min: float = 0.001, k: float = 10.0, c: float = 0.8
) -> jax.Array:
    """gamma(step) for the sigmoid warmup; `step` is a scalar int/float (traced or not).

    Returns:
      float32 scalar in [gamma_min, 1].
    """
    s = jnp.asarray(step, jnp.float32)

    def sig(x):
        return jax.nn.sigmoid(k * (x / warmup_steps - c))

    ramp = (sig(s) - sig(0.0)) / (sig(jnp.float32(warmup_steps)) - sig(0.0))
    value = gamma_min + (1.0 - gamma_min) * ramp
    return jnp.where(s < warmup_steps, value, 1.0).astype(jnp.float32)


def gamma(step, config) -> jax.Array:
    """gamma(step) from config.recipe (1 when recipe.gamma_warmup is off); float32 scalar."""
    recipe = config.recipe
    if not recipe.gamma_warmup:
        return jnp.float32(1.0)
    return gamma_schedule(
        step, recipe.gamma_warmup_steps, recipe.gamma_min, recipe.gamma_k, recipe.gamma_c
    )


def scale_encoder_gradient(z0: jax.Array, g) -> jax.Array:
    """z0g = stop_gradient(z0) + g * (z0 - stop_gradient(z0)).

    Forward value equals z0 (exactly: the second term is 0); d z0g / d z0 = g.
    Args:
      z0: [B, K, D] float32 latents from the encoder.
      g: float32 scalar gamma.
    Returns:
      [B, K, D] float32.
    """
    frozen = jax.lax.stop_gradient(z0)
    return frozen + jnp.asarray(g, z0.dtype) * (z0 - frozen)
