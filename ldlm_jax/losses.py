"""The LDLM loss terms, as pure functions of arrays (all plain means, pads masked, float32).

- Diffusion (x0-prediction): mean over latents and dims of (x0_hat - z0g)^2, per example, then over
  the batch. No per-t weighting. Not masked: the K latents are learned queries of a Perceiver, not
  per-token slots, so even with K = L and padding every latent is part of the sample the denoiser
  must generate (the sequence length is encoded in them).
- Hidden-state MSE decoder loss: mean over non-pad tokens and dims of (h_hat - h)^2, where
  h_hat = D_lat(z0 + sigma_dec * eps'); the noise is added in training only (`decoder_input`).
- Token reconstruction: CE of D_tok(stop_gradient(h_hat)) against the input ids over non-pad
  tokens; it trains the token decoder only. In the 'ce' recipe the same CE, without the stop
  gradient, is the decoder loss and trains the token decoder, the latent decoder and the encoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def diffusion_loss(x0_hat: jax.Array, z0g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x0_hat, z0g [B, K, D] -> (scalar mean loss, per-example loss [B]), float32."""
    err = (x0_hat.astype(jnp.float32) - z0g.astype(jnp.float32)) ** 2
    per_example = jnp.mean(err, axis=(1, 2))
    return jnp.mean(per_example), per_example


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of values [B, L] over mask [B, L] (1 = counted); 0 when the mask is empty."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def hidden_mse(h_hat: jax.Array, h: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over non-pad tokens and dims of (h_hat - h)^2.

    h_hat, h [B, L, Dh] float; mask [B, L] int (1 = token). Returns a float32 scalar.
    """
    err = jnp.mean((h_hat.astype(jnp.float32) - h.astype(jnp.float32)) ** 2, axis=-1)
    return masked_mean(err, mask)


def token_cross_entropy(
    logits: jax.Array, ids: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Masked CE and accuracy of logits [B, L, V] float32 against ids [B, L] int32.

    Returns:
      (mean CE over non-pad tokens, token accuracy over non-pad tokens), float32 scalars.
    """
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == ids).astype(jnp.float32)
    return masked_mean(nll, mask), masked_mean(correct, mask)


def decoder_input(z0: jax.Array, sigma_dec: float, rng: jax.Array | None, train: bool) -> jax.Array:
    """The latent decoder's input: z0 + sigma_dec * eps' in training, z0 otherwise. [B, K, D]."""
    if not train or sigma_dec == 0 or rng is None:
        return z0
    return z0 + sigma_dec * jax.random.normal(rng, z0.shape, z0.dtype)


def latent_std(z0: jax.Array) -> jax.Array:
    """Std of the latents over batch, latents and dims (the scale sigma_dec assumes ~1); f32."""
    return jnp.std(jax.lax.stop_gradient(z0).astype(jnp.float32))
