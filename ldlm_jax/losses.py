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

    The NLL has a hand-written gradient (softmax - one_hot, one elementwise pass over the
    logits): autodiff of log_softmax + take_along_axis scattered into a zero [B, L, V] array and
    summed two cotangents, ~25% of the demo train step on 2 CPU cores. A token counts as
    correct when its label's logit is the row's maximum (argmax would pick the first of tied
    maxima; float logits tie with probability ~0), which reuses the max the NLL takes anyway.

    Returns:
      (mean CE over non-pad tokens, token accuracy over non-pad tokens), float32 scalars.
    """
    nll, row_max, label_logit = _nll_with_max(logits.astype(jnp.float32), ids.astype(jnp.int32))
    correct = (label_logit >= row_max).astype(jnp.float32)
    return masked_mean(nll, mask), masked_mean(correct, mask)


def _nll_parts(logits, ids):
    row_max = jnp.max(logits, axis=-1)
    lse = row_max + jnp.log(jnp.sum(jnp.exp(logits - row_max[..., None]), axis=-1))
    label_logit = jnp.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    return lse, row_max, label_logit


@jax.custom_vjp
def _nll_with_max(logits: jax.Array, ids: jax.Array):
    """logits [..., V] float32, ids [...] int32 -> (NLL, row max, label logit), each [...];
    only the NLL carries a gradient (_nll_bwd)."""
    lse, row_max, label_logit = _nll_parts(logits, ids)
    return lse - label_logit, row_max, label_logit


def _nll_fwd(logits, ids):
    lse, row_max, label_logit = _nll_parts(logits, ids)
    return (lse - label_logit, row_max, label_logit), (logits, ids, lse)


def _nll_bwd(residuals, cotangents):
    logits, ids, lse = residuals
    g = cotangents[0]  # the max and the label logit are metrics: no gradient through them
    vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    one_hot = (vocab == ids[..., None]).astype(logits.dtype)
    return (jnp.exp(logits - lse[..., None]) - one_hot) * g[..., None], None


_nll_with_max.defvjp(_nll_fwd, _nll_bwd)


def decoder_input(z0: jax.Array, sigma_dec: float, rng: jax.Array | None, train: bool) -> jax.Array:
    """The latent decoder's input: z0 + sigma_dec * eps' in training, z0 otherwise. [B, K, D]."""
    if not train or sigma_dec == 0 or rng is None:
        return z0
    return z0 + sigma_dec * jax.random.normal(rng, z0.shape, z0.dtype)


def latent_std(z0: jax.Array) -> jax.Array:
    """Std of the latents over batch, latents and dims (the scale sigma_dec assumes ~1); f32."""
    return jnp.std(jax.lax.stop_gradient(z0).astype(jnp.float32))
