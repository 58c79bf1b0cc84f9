"""The LDLM token decoder D_tok: reconstructed hidden states h_hat -> token logits.

Input Linear(lm_dim -> width) plus learned positions, `num_layers` bidirectional pre-LN
transformer layers (LayerNorm, attention with biases, GELU FFN, as in BERT/GPT-2), a final
LayerNorm and an untied Linear(width -> vocab). It is trained on stop_gradient(h_hat) with
cross-entropy (the recipe's 'mse' mode), or end to end as the decoder loss ('ce' mode).
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
    LayerNorm,
    LearnedEmbedding,
    constrain,
    remat_layer,
)

Dtype = Any


class PreLNBlock(nn.Module):
    """x += Attn(LN(x), key_mask); x += FFN(LN(x))."""

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_kernel: str = "xla"  # attention_kernels.attention: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x [B, L, D], mask [B, L] (1 = token) -> [B, L, D]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = LayerNorm(name="attention_norm", **kw)(x)
        attention = Attention(
            self.num_heads, use_bias=True, kernel=self.attention_kernel, name="attention", **kw
        )
        x = x + attention(y, key_mask=mask)
        y = LayerNorm(name="mlp_norm", **kw)(x)
        x = x + GeluMLP(self.mlp_dim, use_bias=True, name="mlp", **kw)(y)
        return constrain(x)


class TokenDecoder(nn.Module):
    """D_tok: h_hat [B, L, lm_dim] -> logits [B, L, vocab] float32."""

    vocab_size: int
    max_length: int
    width: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    remat: str = "none"  # activation checkpointing per layer (layers.remat_layer)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_kernel: str = "xla"  # attention_kernels.attention: 'xla', 'flash' or 'auto'

    @nn.compact
    def __call__(self, h_hat: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """h_hat [B, L, lm_dim] float, mask [B, L] int or None -> logits [B, L, vocab] float32."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        length = h_hat.shape[1]
        positions = LearnedEmbedding(self.max_length, self.width, name="positions")()
        x = Dense(self.width, ("mlp", "embed"), True, name="input_proj", **kw)(
            h_hat.astype(self.dtype)
        )
        x = x + positions[None, :length].astype(self.dtype)
        block_cls = remat_layer(PreLNBlock, self.remat)
        for i in range(self.num_layers):
            block = block_cls(
                self.num_heads,
                self.mlp_dim,
                attention_kernel=self.attention_kernel,
                name=f"layer_{i}",
                **kw,
            )
            x = block(x, mask)
        x = LayerNorm(name="output_norm", **kw)(x)
        head = Dense(self.vocab_size, ("embed", "vocab"), True, name="lm_head", head=True, **kw)
        logits = head(x)  # projections.head_linear's gradient (a vocabulary-wide matmul)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
