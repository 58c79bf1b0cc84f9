"""The LDLM latent decoder D_lat: latents z [B, K, latent_dim] -> hidden states h_hat [B, L, Dh].

A Perceiver in the other direction: L learned queries attend, in each of `num_layers` layers, over
[queries; latent features] (the same PerceiverLayer as the encoder: RMSNorm on both inputs,
per-head QK RMSNorm, no biases, then a GELU FFN). The latent features are
Linear(latent_dim -> width)(z) plus a learned position embedding over the K latents (the spec's
"position embeddings"; the L queries are themselves learned per position). A final RMSNorm and
Linear(width -> lm_dim) give h_hat, which is compared with the normalised frozen-LM states h.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldlm_jax.encoder import PerceiverLayer
from ldlm_jax.layers import Dense, LearnedEmbedding, RMSNorm, constrain, remat_layer

Dtype = Any


class LatentDecoder(nn.Module):
    """D_lat: z [B, K, latent_dim] -> h_hat [B, L, lm_dim] float32."""

    length: int
    num_latents: int
    lm_dim: int
    width: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    local_bias: float = 0.0
    remat: str = "none"  # activation checkpointing per layer (layers.remat_layer)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_kernel: str = "xla"  # attention_kernels.attention: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """z [B, K, latent_dim] float -> h_hat [B, L, lm_dim] float32."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, k = z.shape[0], z.shape[1]
        if k != self.num_latents:
            raise ValueError(f"latent decoder built for K={self.num_latents} latents, got {k}")
        latent_positions = LearnedEmbedding(
            self.num_latents, self.width, ("latent", "embed"), name="latent_positions"
        )()
        context = Dense(self.width, ("mlp", "embed"), name="latent_proj", **kw)(
            z.astype(self.dtype)
        )
        context = context + latent_positions[None].astype(self.dtype)
        queries = LearnedEmbedding(self.length, self.width, name="queries")()
        x = jnp.broadcast_to(queries.astype(self.dtype), (batch, self.length, self.width))
        layer_cls = remat_layer(PerceiverLayer, self.remat)
        for i in range(self.num_layers):
            layer = layer_cls(
                self.num_heads,
                self.mlp_dim,
                self.local_bias,
                attention_kernel=self.attention_kernel,
                name=f"layer_{i}",
                **kw,
            )
            x = layer(x, context)
        x = RMSNorm(name="output_norm", **kw)(x)
        h_hat = Dense(self.lm_dim, ("embed", "mlp"), name="output_proj", **kw)(x)
        return constrain(h_hat.astype(jnp.float32))
