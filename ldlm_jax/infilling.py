"""Conditional generation by replacement (inpainting): prefix prompts and infilling.

Not in the paper. Given the clean latents z0 of the known positions (the encoder's output on the
known tokens) and a mask of those positions, every state z_t the sampler visits has its known
positions replaced by a fresh forward-process draw alpha_t z0 + sigma_t eps, so the denoiser sees
the known content at the right noise level while it generates the rest; the sampler's output
keeps the known positions exactly (z0). This is the simple replacement method: it conditions the
free positions only through the denoiser's attention to the noised known ones (it is not an exact
sampler of the conditional distribution).

It needs one latent per token position (K = L): with K < L latents a latent mixes many positions,
so no subset of latents corresponds to "the prompt's tokens".
"""

from __future__ import annotations

import jax.numpy as jnp


def check_infilling_supported(latent_count: int, seq_len: int) -> None:
    """ValueError unless K == L (one latent per token position), which prompts and infilling need.

    Args:
      latent_count: K, the number of latents (ldlm_jax.config.latent_count(config)).
      seq_len: L, the number of token positions (config.data.seq_len).
    """
    if int(latent_count) != int(seq_len):
        raise ValueError(
            f"prefix prompts and infilling need one latent per token position (K = L), but this "
            f"model has K={latent_count} latents for L={seq_len} tokens: with K < L every latent "
            "summarises several positions, so the known tokens cannot be held fixed in latent "
            "space. Train with model.latent_count=0 (K = L) to use prompts or infilling."
        )


def check_known(shape, known_latents, known_mask) -> None:
    """ValueError unless known_latents [B,K,D] and known_mask [B,K] match `shape` (both or none).

    Args:
      shape: (B, K, D), the sampled latents' shape.
      known_latents: None or an array [B, K, D] (float).
      known_mask: None or an array [B, K] (bool; True = known position).
    """
    if (known_latents is None) != (known_mask is None):
        raise ValueError(
            "give both known_latents [B,K,D] and known_mask [B,K] (or neither) for infilling"
        )
    if known_latents is None:
        return
    shape = tuple(shape)
    if tuple(known_latents.shape) != shape:
        raise ValueError(
            f"known_latents has shape {tuple(known_latents.shape)}, but the sampled latents have "
            f"shape {shape}: pass the encoder's latents of the known tokens, one row per sample"
        )
    if tuple(known_mask.shape) != shape[:2]:
        raise ValueError(
            f"known_mask has shape {tuple(known_mask.shape)}; it must be [batch, latents] = "
            f"{shape[:2]} (True where the latent is known)"
        )


def replace_known(z, known_latents, known_mask, alpha, sigma, eps):
    """z [B,K,D] with known positions set to alpha z0 + sigma eps (a forward-process draw).

    Args:
      z: [B, K, D] float32, the sampler's state at time t.
      known_latents: [B, K, D] float32 clean latents z0 (only the known positions are read).
      known_mask: [B, K] bool.
      alpha, sigma: scalars alpha_t, sigma_t.
      eps: [B, K, D] float32 standard normal noise, or None for the noise-free alpha z0.
    Returns:
      [B, K, D] float32.
    """
    noised = alpha * known_latents
    if eps is not None:
        noised = noised + sigma * eps
    return jnp.where(known_mask[..., None], noised, z)
