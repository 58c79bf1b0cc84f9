"""The LDLM encoder E: a Perceiver that turns the frozen LM's hidden states into K latents z0.

Token features are Linear(lm_dim -> latent_dim)(h_norm) plus a learned absolute position embedding.
K learned initial latents go through `num_layers` layers, each
  latents += Attention(q = RMSNorm(latents), kv = [RMSNorm(latents); RMSNorm'(token features)])
  latents += GELU-FFN(RMSNorm(latents))
with per-head QK RMSNorm and no biases; pad tokens are masked out of the keys. The output goes
through a final RMSNorm, so the latents are about unit scale per position (the decoder-input noise
sigma_dec and the diffusion schedule assume that). K = L by default; any K <= L works.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldlm_jax.layers import (
    Attention,
    Dense,
    GeluMLP,
    LearnedEmbedding,
    RMSNorm,
    constrain,
    remat_layer,
)

Dtype = Any


def locality_bias(num_queries: int, num_context: int, num_heads: int, slope: float):
    """ALiBi-style logits bias -slope_h * |p_q - p_k| over keys [queries; context], or None.

    Queries and context items are placed on a common [0, 1) axis (slot i of n at (i + 0.5) / n),
    so with K != L latent k starts out attending to its own stretch of tokens. Head h uses
    slope * 2^(-h) * max(num_queries, num_context) (some heads stay nearly global). Not in the
    spec: an optional inductive bias (model.perceiver_local_bias; 0 = off) that lets small
    Perceivers learn the positional routing in hundreds rather than thousands of steps.
    Returns: float32 [heads, Q, Q + C] or None.
    """
    if slope <= 0:
        return None
    pq = (jnp.arange(num_queries) + 0.5) / num_queries
    pc = (jnp.arange(num_context) + 0.5) / num_context
    pk = jnp.concatenate([pq, pc])
    dist = jnp.abs(pq[:, None] - pk[None, :])
    slopes = slope * max(num_queries, num_context) * 2.0 ** -jnp.arange(num_heads)
    return -(slopes[:, None, None] * dist[None]).astype(jnp.float32)


class PerceiverLayer(nn.Module):
    """One latent-attention layer: queries from `x`, keys/values from [x; context], then an FFN.

    Shared by the encoder (context = token features) and the latent decoder (context = latents).
    """

    num_heads: int
    mlp_dim: int
    local_bias: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_kernel: str = "xla"  # attention_kernels.attention: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array, context_mask: jax.Array | None = None
    ) -> jax.Array:
        """x [B, Q, D], context [B, C, D], context_mask [B, C] (1 = real) -> [B, Q, D]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x_norm = RMSNorm(name="query_input_norm", **kw)(x)
        c_norm = RMSNorm(name="context_input_norm", **kw)(context)
        kv = jnp.concatenate([x_norm, c_norm], axis=1)
        key_mask = None
        if context_mask is not None:
            own = jnp.ones(x.shape[:2], dtype=bool)
            key_mask = jnp.concatenate([own, context_mask.astype(bool)], axis=1)
        bias = locality_bias(x.shape[1], context.shape[1], self.num_heads, self.local_bias)
        attention = Attention(
            self.num_heads, qk_norm=True, kernel=self.attention_kernel, name="attention", **kw
        )
        x = x + attention(x_norm, kv, key_mask, bias)
        x = x + GeluMLP(self.mlp_dim, name="mlp", **kw)(RMSNorm(name="mlp_norm", **kw)(x))
        return constrain(x)


class Encoder(nn.Module):
    """E: normalised hidden states h [B, L, lm_dim] -> latents z0 [B, K, latent_dim]."""

    num_latents: int
    max_length: int
    latent_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    local_bias: float = 0.0
    remat: str = "none"  # activation checkpointing per layer (layers.remat_layer)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_kernel: str = "xla"  # attention_kernels.attention: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        """h [B, L, lm_dim] float, mask [B, L] int (1 = token) -> z0 [B, K, latent_dim] float32."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = h.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"encoder got {length} tokens but has {self.max_length} positions (data.seq_len)"
            )
        positions = LearnedEmbedding(self.max_length, self.latent_dim, name="token_positions")()
        features = Dense(self.latent_dim, ("mlp", "embed"), name="token_proj", **kw)(h)
        features = features + positions[None, :length].astype(self.dtype)
        latents = LearnedEmbedding(
            self.num_latents, self.latent_dim, ("latent", "embed"), name="initial_latents"
        )()
        x = jnp.broadcast_to(latents.astype(self.dtype), (h.shape[0], *latents.shape))
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
            x = layer(x, features, mask)
        z0 = RMSNorm(dtype=jnp.float32, param_dtype=self.param_dtype, name="output_norm")(x)
        return constrain(z0, ("batch", "latent", "embed"))
